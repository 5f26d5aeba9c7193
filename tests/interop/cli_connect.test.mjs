// `switchboard connect`, the wscat-like client, against `switchboard serve`
// with a Node `ws` client in the same room.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test cli_connect.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { startServer, join, binaryPath, withTimeout } from './lib/harness.mjs';

/** Run `switchboard connect ...args`; returns { proc, lines(), waitFor(re), done }. */
function connect(args) {
  const proc = spawn(binaryPath(), ['connect', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = [];
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => {
    out += d;
    for (const w of waiters.splice(0)) w();
  });
  proc.stderr.on('data', (d) => {
    err += d;
  });
  const done = withTimeout(
    new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal, out, err }))),
    'switchboard connect to exit',
  );
  return {
    proc,
    done,
    output: () => out + err,
    lines: () => out.split('\n').map((l) => l.replace(/\r$/, '')),
    waitFor(line) {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => {
            if (out.split('\n').some((l) => l.replace(/\r$/, '') === line)) resolve();
            else waiters.push(check);
          };
          check();
        }),
        `"${line}" from switchboard connect (output so far: ${JSON.stringify(out + err)})`,
      );
    },
  };
}

describe('switchboard connect', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  it('--execute sends messages, prints what arrives with "< " and exits 0', async () => {
    const c = connect([server.wsUrl('/cli'), '--execute', 'hello', '--execute', 'world', '--wait', '2']);
    const { code, out, err } = await c.done;
    assert.equal(code, 0, `exit code ${code}\nstdout: ${out}\nstderr: ${err}`);
    const lines = c.lines();
    for (const want of ['> hello', '> world', '< hello', '< world']) {
      assert.ok(lines.includes(want), `missing line "${want}" in:\n${out}`);
    }
    assert.ok(lines.indexOf('< hello') < lines.indexOf('< world'), 'messages printed out of order');
  });

  it('sends stdin lines and prints messages from other room members', async () => {
    const node = await join(server.wsUrl('/cli-chat'));
    const c = connect([server.wsUrl('/cli-chat')]);
    c.proc.stdin.write('hi from the terminal\n');
    // Its own echo proves it is in the room.
    await c.waitFor('< hi from the terminal');
    assert.equal((await node.next('the terminal line at the node client')).text, 'hi from the terminal');

    node.ws.send('hi from node');
    await c.waitFor('< hi from node');

    c.proc.stdin.end();
    const { code } = await c.done;
    assert.equal(code, 0, `exit code ${code} after stdin closed:\n${c.output()}`);
    node.ws.terminate();
  });

  it('--binary sends hex as binary messages and prints received binary as hex', async () => {
    const node = await join(server.wsUrl('/cli-bin'));
    // "bytes" in hex.
    const c = connect([server.wsUrl('/cli-bin'), '--binary', '--execute', '6279746573', '--wait', '1']);
    const m = await node.next('binary message from connect');
    assert.equal(m.isBinary, true);
    assert.equal(m.data.toString(), 'bytes');
    const { code } = await c.done;
    assert.equal(code, 0, c.output());
    const echo = c.lines().find((l) => l.startsWith('< '));
    assert.match(echo ?? '', /^< \[binary 5 bytes\] 62 ?79 ?74 ?65 ?73$/, `binary echo printed as ${echo}`);
    node.ws.terminate();
  });

  it('prints the close code and exits non-zero on an abnormal close', async () => {
    const small = await startServer(['--max-message-size', '10']);
    try {
      const c = connect([small.wsUrl('/'), '--execute', 'this is longer than ten bytes', '--wait', '5']);
      const { code } = await c.done;
      assert.notEqual(code, 0, `exit code 0 after a 1009 close:\n${c.output()}`);
      assert.match(c.output(), /1009/, `close code not printed:\n${c.output()}`);
    } finally {
      await small.stop();
    }
  });
});
