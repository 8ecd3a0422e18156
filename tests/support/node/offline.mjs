// Keeps antigravity-claude-proxy offline: loaded with `node --import`, before the package.
//
// - fetch() to a Google host (*.googleapis.com, accounts.google.com) goes to the fake
//   Google backend at APIPOD_FAKE_GOOGLE (http://127.0.0.1:PORT) instead, path and query
//   kept; the original host travels in `x-fake-google-host`.
// - Any other fetch, and any TCP connection (net.Socket.connect: http, https, undici,
//   axios all end there) to a host that is not loopback, throws, and says so on stderr.
import net from 'node:net';

const fake = process.env.APIPOD_FAKE_GOOGLE;
if (!fake) {
  throw new Error('offline.mjs: APIPOD_FAKE_GOOGLE (the fake Google backend URL) is not set');
}
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);
const isGoogle = (host) => host === 'accounts.google.com' || host.endsWith('.googleapis.com');

function refuse(what) {
  const message = `offline.mjs: refused a connection to ${what} (tests never reach the internet)`;
  process.stderr.write(message + '\n');
  throw new Error(message);
}

const realFetch = globalThis.fetch;
globalThis.fetch = async function offlineFetch(input, init = {}) {
  const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
  if (isGoogle(url.hostname)) {
    const target = new URL(url.pathname + url.search, fake);
    const headers = new Headers(init.headers || (input instanceof Request ? input.headers : {}));
    headers.set('x-fake-google-host', url.hostname);
    return realFetch(target, { ...init, headers });
  }
  if (!LOOPBACK.has(url.hostname)) refuse(url.href);
  return realFetch(input, init);
};

const realConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  let options = args[0];
  if (Array.isArray(options)) options = options[0]; // internal normalised form
  let host;
  if (options && typeof options === 'object') {
    host = options.path ? 'localhost' : (options.host ?? 'localhost');
  } else if (typeof options === 'number' || /^\d+$/.test(String(options))) {
    host = typeof args[1] === 'string' ? args[1] : 'localhost';
  } else {
    host = 'localhost'; // a unix socket path
  }
  if (!LOOPBACK.has(host)) refuse(`${host} (TCP)`);
  return realConnect.apply(this, args);
};
