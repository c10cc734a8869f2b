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

export async function mutualTlsCredentials(files: TlsFiles): Promise<grpc.ServerCredentials> {
  const [cert, key, ca] = await Promise.all([
    read('TLS certificate', files.certFile),
    read('TLS key', files.keyFile),
    read('client CA certificate', files.clientCaFile),
  ]);
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
}
