// SPDX-License-Identifier: Apache-2.0
// Volume health as users see it: the node plugin's VolumeCondition of a bound volume (abnormal while its
// writes are refused for lack of space, or when the engine could not open it) becomes a Warning event on the
// claim and its PV, once per distinct message, and a Normal event when the volume is healthy again. What was
// last reported is kept on the PV (annotation loopsnap.dev/volume-condition), so a controller restart or a
// leader change neither repeats nor loses it.

export type VolumeHealthAction =
  | { readonly type: 'none' }
  | { readonly type: 'abnormal'; readonly message: string }
  | { readonly type: 'normal'; readonly previous: string };

/**
 * Pure: `reported` is the annotation's value (undefined when nothing abnormal was reported), `condition` what
 * the node answers now (undefined when the node does not know the volume: nothing to say about its health).
 */
export function decideVolumeHealth(
  reported: string | undefined,
  condition: { readonly abnormal: boolean; readonly message: string } | undefined,
): VolumeHealthAction {
  if (condition === undefined) return { type: 'none' };
  if (condition.abnormal) {
    const message = condition.message || 'the node plugin reports the volume abnormal';
    return message === reported ? { type: 'none' } : { type: 'abnormal', message };
  }
  return reported === undefined ? { type: 'none' } : { type: 'normal', previous: reported };
}
