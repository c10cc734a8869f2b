// SPDX-License-Identifier: Apache-2.0
// Credentials of the TCP endpoint our controller dials: mutual TLS, the client must present a certificate
// signed by the configured CA (anything else fails the handshake). Plain TCP only with an explicit opt-in
// for local development.
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { CsiError } from '../errors.js';

export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** CA that signs client certificates. */
  readonly clientCaFile: string;
}

async function read(what: string, path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new CsiError('CSI_ERR_INVALID_FIELD', `cannot read ${what} ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * A connection must finish its TLS handshake within this time or is closed (Node's default is 120 s, which
 * lets idle connections pile up against the endpoint).
 */
export const TLS_HANDSHAKE_TIMEOUT_MS = 5_000;

export async function mutualTlsCredentials(
  files: TlsFiles,
  handshakeTimeoutMs = TLS_HANDSHAKE_TIMEOUT_MS,
): Promise<grpc.ServerCredentials> {
  const [cert, key, ca] = await Promise.all([
    read('TLS certificate', files.certFile),
    read('TLS key', files.keyFile),
    read('client CA certificate', files.clientCaFile),
  ]);
  const creds = grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
  // grpc-js (1.14.7) passes these options to http2.createSecureServer and has no option of its own for the
  // handshake timeout; test/csi/mtls.test.ts 3-4 fails if a grpc-js upgrade stops passing them.
  const ctor = (creds as unknown as { serverConstructorOptions?: { handshakeTimeout?: number } })
    .serverConstructorOptions;
  if (!ctor)
    throw new Error('grpc-js ServerCredentials without constructor options: cannot set the TLS handshake timeout');
  ctor.handshakeTimeout = handshakeTimeoutMs;
  return creds;
}
