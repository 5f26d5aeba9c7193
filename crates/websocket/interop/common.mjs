// Shared helpers of the Node interop scripts.

/** permessage-deflate options of the `ws` package for each test mode. */
export function deflateOptions(mode) {
  switch (mode) {
    case 'off':
      return false;
    case 'default':
      return true;
    case 'nct10':
      return {
        serverNoContextTakeover: true,
        clientNoContextTakeover: true,
        serverMaxWindowBits: 10,
        clientMaxWindowBits: 10,
        threshold: 0,
      };
    default:
      throw new Error(`unknown deflate mode ${mode}`);
  }
}

/** A deterministic 16 MiB payload: half pseudo-random (incompressible), half text. */
export function bigPayload() {
  const size = 16 * 1024 * 1024;
  const buf = Buffer.alloc(size);
  let x = 0x12345678;
  for (let i = 0; i < size / 2; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    buf[i] = x & 0xff;
  }
  const text = Buffer.from('switchboard interop line ');
  for (let i = size / 2; i < size; i++) buf[i] = text[i % text.length];
  return buf;
}

/** Run named async checks, print one line per check and a summary; exit 1 on any failure. */
export async function runChecks(checks, timeoutMs = 120000) {
  let passed = 0;
  let failed = 0;
  for (const [name, fn] of checks) {
    try {
      await Promise.race([
        fn(),
        new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), timeoutMs)),
      ]);
      console.log(`ok   ${name}`);
      passed++;
    } catch (e) {
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
      failed++;
    }
  }
  console.log(`SUMMARY passed=${passed} failed=${failed}`);
  process.exit(failed === 0 ? 0 : 1);
}

export function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}
