// SPDX-License-Identifier: Apache-2.0
// Test PKI made with the system's openssl: a CA, a server certificate (SAN localhost, 127.0.0.1, ::1 and any
// extra names), a client certificate signed by the same CA, and a client certificate signed by an unrelated
// "rogue" CA (what an attacker without our CA would present). EC P-256 keys, valid for 2 days; every file is
// written under `dir` (a fresh temp dir by default) and returned both as a path and as PEM bytes.
//
//   const pki = await createTestPki();
//   grpc.ServerCredentials.createSsl(pki.ca.cert, [{ cert_chain: pki.server.cert, private_key: pki.server.key }], true)
//   grpc.credentials.createSsl(pki.ca.cert, pki.client.key, pki.client.cert)
//   ... await pki.cleanup();
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface PemPair {
  readonly certPath: string;
  readonly keyPath: string;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface TestPki {
  readonly dir: string;
  /** The CA both the server and the controller trust. */
  readonly ca: PemPair;
  /** Server certificate (CN loopsnap-node) for the node plugin's TCP endpoint. */
  readonly server: PemPair;
  /** Client certificate (CN loopsnap-controller) signed by `ca`. */
  readonly client: PemPair;
  /** A CA nobody trusts, and a client certificate it signed. */
  readonly rogueCa: PemPair;
  readonly rogueClient: PemPair;
  /** Removes `dir` (only when createTestPki made it). */
  cleanup(): Promise<void>;
}

export interface TestPkiOptions {
  /** Directory for the files; default a new temp dir, removed by cleanup(). */
  readonly dir?: string;
  /** Extra DNS names for the server certificate. */
  readonly serverNames?: readonly string[];
  readonly serverCommonName?: string;
  readonly clientCommonName?: string;
}

async function openssl(args: readonly string[]): Promise<void> {
  try {
    await run('openssl', [...args], { timeout: 30_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0]} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

async function pair(certPath: string, keyPath: string): Promise<PemPair> {
  return { certPath, keyPath, cert: await readFile(certPath), key: await readFile(keyPath) };
}

async function makeCa(dir: string, name: string, cn: string): Promise<PemPair> {
  const keyPath = join(dir, `${name}.key`);
  const certPath = join(dir, `${name}.crt`);
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyPath]);
  await openssl([
    'req',
    '-x509',
    '-new',
    '-key',
    keyPath,
    '-sha256',
    '-days',
    '2',
    '-subj',
    `/CN=${cn}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-out',
    certPath,
  ]);
  return pair(certPath, keyPath);
}

async function makeLeaf(
  dir: string,
  name: string,
  ca: PemPair,
  cn: string,
  usage: 'serverAuth' | 'clientAuth',
  sans: readonly string[],
): Promise<PemPair> {
  const keyPath = join(dir, `${name}.key`);
  const csrPath = join(dir, `${name}.csr`);
  const certPath = join(dir, `${name}.crt`);
  const extPath = join(dir, `${name}.ext`);
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyPath]);
  await openssl(['req', '-new', '-key', keyPath, '-subj', `/CN=${cn}`, '-out', csrPath]);
  const ext = [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    `extendedKeyUsage=${usage}`,
    ...(sans.length > 0 ? [`subjectAltName=${sans.join(',')}`] : []),
  ];
  await writeFile(extPath, `${ext.join('\n')}\n`);
  await openssl([
    'x509',
    '-req',
    '-in',
    csrPath,
    '-CA',
    ca.certPath,
    '-CAkey',
    ca.keyPath,
    '-CAcreateserial',
    '-days',
    '2',
    '-sha256',
    '-extfile',
    extPath,
    '-out',
    certPath,
  ]);
  return pair(certPath, keyPath);
}

export async function createTestPki(opts: TestPkiOptions = {}): Promise<TestPki> {
  const owned = opts.dir === undefined;
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'loopsnap-pki-')));
  try {
    const ca = await makeCa(dir, 'ca', 'loopsnap-test-ca');
    const rogueCa = await makeCa(dir, 'rogue-ca', 'loopsnap-rogue-ca');
    const sans = ['DNS:localhost', 'IP:127.0.0.1', 'IP:::1', ...(opts.serverNames ?? []).map((n) => `DNS:${n}`)];
    const server = await makeLeaf(dir, 'server', ca, opts.serverCommonName ?? 'loopsnap-node', 'serverAuth', sans);
    const clientCn = opts.clientCommonName ?? 'loopsnap-controller';
    const client = await makeLeaf(dir, 'client', ca, clientCn, 'clientAuth', []);
    const rogueClient = await makeLeaf(dir, 'rogue-client', rogueCa, clientCn, 'clientAuth', []);
    return {
      dir,
      ca,
      server,
      client,
      rogueCa,
      rogueClient,
      cleanup: async () => {
        if (owned) await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    if (owned) await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
