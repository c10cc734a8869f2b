// SPDX-License-Identifier: Apache-2.0
export interface BenchContext {
  readonly json: boolean;
  readonly args: readonly string[];
  log(line: string): void;
}

export interface BenchSuite {
  readonly description: string;
  run(ctx: BenchContext): Promise<Record<string, number | string | boolean | null>>;
}
