// An independent decoder of audiostream's frame wire format v1, written from docs/wire-format.md alone
// (not from streamproc/wire.py), to prove the page is enough to implement a client in another language.
// Usage: node wire_decode.mjs VECTOR.json ...   prints one JSON line per vector: the decoded fields or
// {"reason": TOKEN}; tests/unit/test_wire_client.py compares them with the vectors' expectations.
import { readFileSync } from "node:fs";

const CRC_TABLE = new Uint32Array(256).map((_, n) => {   // CRC-32/ISO-HDLC, reflected, poly 0xEDB88320
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

class Reject extends Error { constructor(reason) { super(reason); this.reason = reason; } }
const ENCODINGS = { 1: ["pcm_s16le", 2], 2: ["pcm_f32le", 4] };

function checkKey(key) {                                 // rule 0
  if (key === null || key.length === 0 || key.length > 256) throw new Reject("bad_stream_id");
  let text;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(key); } catch { throw new Reject("bad_stream_id"); }
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (cp <= 0x1f || cp === 0x7f) throw new Reject("bad_stream_id");
  }
  return text;
}

export function decode(key, value, { maxPayloadBytes = 1 << 20, maxSeconds = 10, modelSampleRate = null } = {}) {
  const streamId = checkKey(key);
  if (value === null) throw new Reject("empty");                                   // rule 1
  if (value.length <= 5) throw new Reject("too_short");
  const dv = new DataView(value.buffer, value.byteOffset, value.byteLength);
  if (String.fromCharCode(...value.subarray(0, 4)) !== "ASFM") throw new Reject("bad_magic");   // 2
  if (value[4] !== 1) throw new Reject("unsupported_version");                      // 3
  if (value.length < 64) throw new Reject("too_short");                             // 4
  const headerLength = value[5];
  if (headerLength < 64 || headerLength > value.length) throw new Reject("bad_header");   // 5
  const enc = ENCODINGS[value[6]];
  if (!enc) throw new Reject("unsupported_encoding");                               // 6
  const channels = value[7];
  if (channels < 1 || channels > 8) throw new Reject("bad_channels");               // 7
  const flags = dv.getUint16(8, true);
  const sampleRate = dv.getUint32(12, true);
  if (sampleRate < 1 || sampleRate > 384000) throw new Reject("bad_sample_rate");   // 8
  if (dv.getUint16(10, true) !== 0) throw new Reject("bad_header");                 // 9
  const nFrames = dv.getUint32(16, true);
  const payloadBytes = nFrames * channels * enc[1];
  if (payloadBytes > maxPayloadBytes) throw new Reject("oversized");                // 10
  if (nFrames / sampleRate > maxSeconds) throw new Reject("too_long");              // 10b
  const payload = value.subarray(headerLength);
  if (payload.length !== payloadBytes) throw new Reject("length_mismatch");         // 11
  if (crc32(payload) !== dv.getUint32(60, true)) throw new Reject("checksum_mismatch");   // 12
  const pv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const samples = [];
  for (let i = 0; i < nFrames; i++) {
    const row = [];
    for (let c = 0; c < channels; c++) {
      const at = (i * channels + c) * enc[1];
      const x = enc[0] === "pcm_s16le" ? pv.getInt16(at, true) : pv.getFloat32(at, true);
      if (!Number.isFinite(x)) throw new Reject("non_finite");                      // 13
      row.push(x);
    }
    samples.push(row);
  }
  if (modelSampleRate !== null && sampleRate !== modelSampleRate) throw new Reject("sample_rate_mismatch");  // 14
  const hex = b => Array.from(b, x => x.toString(16).padStart(2, "0")).join("");
  return {
    key: streamId, sample_rate: sampleRate, channels, n_frames: nFrames, encoding: enc[0], flags,
    sequence: dv.getBigUint64(20, true).toString(), sample_offset: dv.getBigUint64(28, true).toString(),
    capture_time_ns: dv.getBigInt64(36, true).toString(), session_id: hex(value.subarray(44, 60)),
    header_extension: hex(value.subarray(64, headerLength)), samples,
  };
}

const bytes = hex => new Uint8Array(hex.match(/../g)?.map(h => parseInt(h, 16)) ?? []);
for (const path of process.argv.slice(2)) {
  const v = JSON.parse(readFileSync(path, "utf8"));
  const key = "key_hex" in v ? bytes(v.key_hex) : v.key === null ? null : new TextEncoder().encode(v.key);
  const value = v.value_hex === null || v.value_hex === undefined ? null : bytes(v.value_hex);
  const limits = { maxPayloadBytes: v.max_payload_bytes ?? 1 << 20, maxSeconds: v.max_seconds ?? 10,
                   modelSampleRate: v.model_sample_rate ?? null };
  let out;
  try { out = decode(key, value, limits); } catch (e) { if (!(e instanceof Reject)) throw e; out = { reason: e.reason }; }
  console.log(JSON.stringify({ vector: path, ...out }));
}
