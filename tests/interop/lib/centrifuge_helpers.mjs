// Helpers shared by the suites that drive the `centrifuge` SDK: minting tokens with the
// binary's own `token` command, waiting for one event, and collecting publications in order.

import { execFileSync } from 'node:child_process';
import { binaryPath, withTimeout } from './harness.mjs';

/** Mint a token with `switchboard token --secret SECRET ARGS…`. */
export function mintToken(secret, args) {
  return execFileSync(binaryPath(), ['token', '--secret', secret, ...args], { encoding: 'utf8' }).trim();
}

/** Wait for the first `event` on `emitter` whose context satisfies `pred`. */
export function once(emitter, event, pred = () => true, what = event) {
  return withTimeout(
    new Promise((resolve) => {
      const f = (ctx) => {
        if (!pred(ctx)) return;
        emitter.removeListener(event, f);
        resolve(ctx);
      };
      emitter.on(event, f);
    }),
    what,
  );
}

/** Collects a subscription's publications in arrival order; `until(n)` waits for n of them. */
export function collect(sub) {
  const got = [];
  const waiters = [];
  sub.on('publication', (ctx) => {
    got.push(ctx);
    for (const w of waiters.splice(0)) w();
  });
  return {
    got,
    until(n, what = `${n} publications`) {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => (got.length >= n ? resolve(got) : waiters.push(check));
          check();
        }),
        what,
      );
    },
  };
}
