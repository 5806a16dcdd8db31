// An OHTTP client for the browser, written here from RFC 9458 and
// draft-ietf-ohai-chunked-ohttp on two libraries we did not write: hpke-js (RFC 9180) and
// bhttp-js (RFC 9292). esbuild bundles it; the page calls `window.ohttpChat`.
// The response keys use the browser's own WebCrypto (HKDF, AES-GCM).
import { AeadId, CipherSuite, KdfId, KemId } from "hpke-js";
import { BHttpDecoder, BHttpEncoder } from "bhttp-js";

const KEY_CONFIG_PATH = "/.well-known/ohttp-gateway";
const AEADS = { 1: ["AES-GCM", 16, 12], 2: ["AES-GCM", 32, 12] };  // id: name, Nk, Nn
const text = new TextEncoder();

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function varint(n) {  // RFC 9000 section 16
  if (n < 64) return Uint8Array.of(n);
  if (n < 16384) return Uint8Array.of(0x40 | (n >> 8), n & 0xff);
  return Uint8Array.of(0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}

function readVarint(buf, at) {
  if (at >= buf.length) return null;
  const size = 1 << (buf[at] >> 6);
  if (at + size > buf.length) return null;
  let n = buf[at] & 0x3f;
  for (let i = 1; i < size; i++) n = n * 256 + buf[at + i];
  return [n, at + size];
}

// RFC 9458 section 3: the first key configuration with X25519 and an AES-GCM suite.
function pickKeyConfig(list) {
  for (let at = 0; at + 2 <= list.length;) {
    const length = (list[at] << 8) | list[at + 1];
    const config = list.subarray(at + 2, at + 2 + length);
    at += 2 + length;
    const kem = (config[1] << 8) | config[2];
    if (kem !== 0x0020) continue;
    const publicKey = config.subarray(3, 35);
    const algs = config.subarray(37);
    for (let i = 0; i + 4 <= algs.length; i += 4) {
      const kdf = (algs[i] << 8) | algs[i + 1], aead = (algs[i + 2] << 8) | algs[i + 3];
      if (kdf === 1 && AEADS[aead]) return { keyId: config[0], publicKey, aead };
    }
  }
  throw new Error("no usable key configuration");
}

async function hkdf(secret, salt, info, length) {
  const key = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt, info: text.encode(info) }, key, length * 8));
}

async function sealRequest(gateway, request) {
  const list = new Uint8Array(await (await fetch(gateway + KEY_CONFIG_PATH)).arrayBuffer());
  const { keyId, publicKey, aead } = pickKeyConfig(list);
  const suite = new CipherSuite({ kem: KemId.DhkemX25519HkdfSha256, kdf: KdfId.HkdfSha256,
                                  aead: aead === 1 ? AeadId.Aes128Gcm : AeadId.Aes256Gcm });
  const header = Uint8Array.of(keyId, 0x00, 0x20, 0x00, 0x01, 0x00, aead);
  const info = concat(text.encode("message/bhttp chunked request"), Uint8Array.of(0), header);
  const sender = await suite.createSenderContext({
    recipientPublicKey: await suite.kem.deserializePublicKey(publicKey), info });
  const inner = new Uint8Array(await new BHttpEncoder().encodeRequest(request));
  const chunk = new Uint8Array(await sender.seal(inner, new Uint8Array(0)));
  const last = new Uint8Array(await sender.seal(new Uint8Array(0), text.encode("final")));
  const enc = new Uint8Array(sender.enc);
  return { sender, enc, aead,
           body: concat(header, enc, varint(chunk.length), chunk, Uint8Array.of(0), last) };
}

// The chunked response, opened chunk by chunk as it arrives.
async function* openResponse(body, sender, enc, aead) {
  const [name, nk, nn] = AEADS[aead];
  const size = Math.max(nk, nn);
  const secret = new Uint8Array(await sender.export(
    text.encode("message/bhttp chunked response"), size));
  const reader = body.getReader();
  let buf = new Uint8Array(0), key = null, base = null, counter = 0, ended = false;
  const open = async (ciphertext, final) => {
    const nonce = base.slice();
    for (let i = 0, c = counter++; i < 8 && c > 0; i++, c = Math.floor(c / 256)) {
      nonce[nn - 1 - i] ^= c & 0xff;
    }
    return new Uint8Array(await crypto.subtle.decrypt(
      { name, iv: nonce, additionalData: final ? text.encode("final") : new Uint8Array(0) },
      key, ciphertext));
  };
  while (!ended) {
    const { done, value } = await reader.read();
    if (value) buf = concat(buf, value);
    ended = done;
    if (key === null) {
      if (buf.length < size) { if (ended) throw new Error("truncated response"); continue; }
      const salt = concat(enc, buf.subarray(0, size));
      key = await crypto.subtle.importKey("raw", await hkdf(secret, salt, "key", nk), name,
                                          false, ["decrypt"]);
      base = await hkdf(secret, salt, "nonce", nn);
      buf = buf.subarray(size);
    }
    for (;;) {
      const got = readVarint(buf, 0);
      if (got === null) break;
      const [length, at] = got;
      if (length === 0) {
        if (!ended) break;  // the final chunk runs to the end of the body
        yield await open(buf.subarray(at), true);
        return;
      }
      if (buf.length < at + length) break;
      yield await open(buf.subarray(at, at + length), false);
      buf = buf.subarray(at + length);
    }
  }
  throw new Error("the response ended without its final chunk");
}

window.ohttpChat = async (gateway, model) => {
  const request = new Request("https://gateway.invalid/v1/chat/completions", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, max_tokens: 4, stream: true,
                           messages: [{ role: "user", content: "hello" }] }) });
  const { sender, enc, aead, body } = await sealRequest(gateway, request);
  const outer = await fetch(gateway + KEY_CONFIG_PATH, {
    method: "POST", headers: { "content-type": "message/ohttp-chunked-req" }, body });
  if (outer.headers.get("content-type") !== "message/ohttp-chunked-res") {
    throw new Error(`HTTP ${outer.status} ${outer.headers.get("content-type")}`);
  }
  const pieces = [];
  for await (const piece of openResponse(outer.body, sender, enc, aead)) pieces.push(piece);
  const inner = new BHttpDecoder().decodeResponse(concat(...pieces));
  const events = await inner.text();
  const deltas = events.split("\n\n").filter((e) => e.startsWith("data: {"))
    .map((e) => JSON.parse(e.slice(6))).filter((e) => e.choices.length)
    .map((e) => e.choices[0].delta.content ?? "");
  return { status: inner.status, chunks: pieces.length, streamed: deltas.join(""),
           done: events.trimEnd().endsWith("data: [DONE]"),
           incremental: outer.headers.get("incremental") };
};
