// SPDX-License-Identifier: Apache-2.0
// pino loggers with Kubernetes structured-logging keys (lowerCamelCase, named for the object kind,
// errors under `err`). Secrets are redacted wherever they appear one or two levels deep.
import { type DestinationStream, type Logger, pino } from 'pino';

export type { Logger } from 'pino';

export interface LoggerOptions {
  readonly component: string;
  readonly level?: string;
  readonly destination?: DestinationStream;
}

export const REDACTED_PATHS: readonly string[] = ['secrets', '*.secrets', '*.*.secrets', 'req.secrets'];

export function createLogger(opts: LoggerOptions): Logger {
  const base = { component: opts.component };
  const options = {
    level: opts.level ?? 'info',
    base,
    redact: { paths: [...REDACTED_PATHS], censor: '[REDACTED]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return opts.destination ? pino(options, opts.destination) : pino(options);
}
