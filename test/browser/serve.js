// A static file server for the browser test, over the repository, on loopback only. With
// `isolated`, it sends the COOP/COEP headers that give a page SharedArrayBuffer.
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.map': 'application/json' };

export function serve(root, isolated) {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://localhost').pathname));
    if (path.includes('..')) return res.writeHead(403).end();
    try {
      let body = await readFile(join(root, path));
      // what a bundler does: resolve the one bare import the package has (workers see no import map)
      if (extname(path) === '.js') body = Buffer.from(String(body).replaceAll("from '@assemblyscript/loader'", "from '/node_modules/@assemblyscript/loader/index.js'"));
      const headers = { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream' };
      if (isolated) Object.assign(headers, { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' });
      res.writeHead(200, headers).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ port: server.address().port, close: () => new Promise((r) => server.close(r)) })));
}
