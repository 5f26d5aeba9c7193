// A tiny round-robin HTTP load balancer for tests: every request goes to the next backend in
// turn, with no session affinity of any kind (the situation that breaks Engine.IO polling on
// servers that need sticky sessions). WebSocket upgrades are passed through to the next backend
// as raw TCP.
import http from 'node:http';
import net from 'node:net';

/**
 * Starts the proxy on a free loopback port.
 * @param {string[]} backends `host:port` of each backend.
 * @returns {Promise<{port: number, url: string, hits: number[], close: () => Promise<void>}>}
 *   `hits[i]` counts the requests sent to backend i.
 */
export async function startRoundRobinProxy(backends) {
  let next = 0;
  const hits = backends.map(() => 0);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const pick = () => {
    const i = next;
    next = (next + 1) % backends.length;
    hits[i] += 1;
    const [host, port] = backends[i].split(':');
    return { host, port: Number(port) };
  };

  const server = http.createServer((req, res) => {
    const { host, port } = pick();
    const upstream = http.request(
      { host, port, method: req.method, path: req.url, headers: req.headers, agent },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`proxy: ${err.message}`);
    });
    req.pipe(upstream);
  });

  // Upgraded connections are no longer the HTTP server's: closing the proxy ends them here.
  const tunnels = new Set();
  server.on('upgrade', (req, socket, head) => {
    const { host, port } = pick();
    const up = net.connect(port, host, () => {
      let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      }
      up.write(text + '\r\n');
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const end = () => {
      up.destroy();
      socket.destroy();
      tunnels.delete(end);
    };
    tunnels.add(end);
    up.on('error', end);
    socket.on('error', end);
    // Forgotten once closed (the pipes end the other side after what was in flight).
    socket.on('close', () => tunnels.delete(end));
  });

  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    hits,
    close: () =>
      new Promise((resolve) => {
        agent.destroy();
        for (const end of [...tunnels]) end();
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}
