// SPDX-License-Identifier: Apache-2.0
// Discovery of our own API group when a replica starts leading: an API server that is still starting (503,
// connection refused) is waited for; a missing group turns VolumeRestore/VolumeRefresh off; a server that
// never answers fails the start (the leader then gives up its Lease).
import { describe, expect, it } from 'vitest';
import { KubeApiError } from '../../common/src/kube-rest.js';
import { servesLoopsnapApi } from './controller.js';

function server(answers: Array<KubeApiError | 'ok'>) {
  let calls = 0;
  return {
    get calls() {
      return calls;
    },
    get: async <T>(): Promise<T> => {
      const a = answers[Math.min(calls++, answers.length - 1)];
      if (a !== 'ok') throw a;
      return {} as T;
    },
  };
}

const starting = new KubeApiError(
  503,
  'ServiceUnavailable',
  'the request has been made before all known HTTP paths have been installed',
);
const unreachable = new KubeApiError(0, '', 'connect ECONNREFUSED 127.0.0.1:6443');

describe('servesLoopsnapApi', () => {
  it('waits out an API server that is still starting, then reports the group', async () => {
    const s = server([starting, unreachable, 'ok']);
    await expect(servesLoopsnapApi(s, 10_000, () => false)).resolves.toBe(true);
    expect(s.calls).toBe(3);
  });

  it('reports a missing group (404) at once, without retrying', async () => {
    const s = server([new KubeApiError(404, 'NotFound', 'the server could not find the requested resource')]);
    await expect(servesLoopsnapApi(s, 10_000, () => false)).resolves.toBe(false);
    expect(s.calls).toBe(1);
  });

  it('gives up with the last error once the retry time is over, or at once when stopped', async () => {
    await expect(servesLoopsnapApi(server([starting]), 600, () => false)).rejects.toBe(starting);
    const s = server([unreachable]);
    await expect(servesLoopsnapApi(s, 10_000, () => true)).rejects.toBe(unreachable);
    expect(s.calls).toBe(1);
  });
});
