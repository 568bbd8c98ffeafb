// A minimal ONNX protobuf writer: just the fields of ModelProto, GraphProto, NodeProto, AttributeProto,
// TensorProto and ValueInfoProto that the peer benchmark's graphs and examples/decoder/onnx-graph.js use
// (field numbers from onnx.proto).
// Every message is built as an array of byte chunks; length-delimited fields concatenate them.

const utf8 = new TextEncoder();

/** Wire types of the protobuf encoding. */
const VARINT = 0;
const LEN = 2;
const I32 = 5;

/** ONNX TensorProto.DataType values (FLOAT, UINT8, INT8, INT32, INT64, FLOAT16) and AttributeProto.AttributeType values used here. */
export const FLOAT = 1;
export const UINT8 = 2;
export const INT8 = 3;
export const INT32 = 6;
export const INT64 = 7;
export const FLOAT16 = 10;
const ATTR_FLOAT = 1;
const ATTR_INT = 2;
const ATTR_STRING = 3;
const ATTR_INTS = 7;

class Writer {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }

  push(bytes) {
    this.chunks.push(bytes);
    this.length += bytes.length;
    return this;
  }

  /** Base-128 varint; negative int64 values take ten bytes (two's complement), as protobuf requires. */
  varint(value) {
    let v = BigInt.asUintN(64, BigInt(value));
    const out = [];
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      out.push(byte);
    } while (v !== 0n);
    return this.push(Uint8Array.from(out));
  }

  tag(field, wireType) {
    return this.varint((field << 3) | wireType);
  }

  int(field, value) {
    return this.tag(field, VARINT).varint(value);
  }

  float(field, value) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    return this.tag(field, I32).push(b);
  }

  bytes(field, value) {
    return this.tag(field, LEN).varint(value.length).push(value);
  }

  string(field, value) {
    return this.bytes(field, utf8.encode(value));
  }

  message(field, writer) {
    this.tag(field, LEN).varint(writer.length);
    for (const c of writer.chunks) this.push(c);
    return this;
  }

  /** Packed repeated varints (int64 dims, ints attributes). */
  packed(field, values) {
    const inner = new Writer();
    for (const v of values) inner.varint(v);
    return this.message(field, inner);
  }

  finish() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

/** AttributeProto: { name, f | i | s | ints }. */
function attribute(name, value) {
  const w = new Writer().string(1, name);
  if (typeof value === 'string') return w.bytes(4, utf8.encode(value)).int(20, ATTR_STRING);
  if (Array.isArray(value)) return w.packed(8, value).int(20, ATTR_INTS);
  if (typeof value === 'object' && 'float' in value) return w.float(2, value.float).int(20, ATTR_FLOAT);
  return w.int(3, value).int(20, ATTR_INT);
}

/** NodeProto. attrs: { name: number (INT) | number[] (INTS) | string | { float } }. */
function node({ op, inputs, outputs, name, domain, attrs = {} }) {
  const w = new Writer();
  for (const i of inputs) w.string(1, i);
  for (const o of outputs) w.string(2, o);
  if (name) w.string(3, name);
  w.string(4, op);
  for (const [k, v] of Object.entries(attrs)) w.message(5, attribute(k, v));
  if (domain) w.string(7, domain);
  return w;
}

/** TensorProto of float32 data stored as raw_data (little-endian, which Float32Array is on x86/ARM). */
function tensor({ name, dims, data }) {
  const w = new Writer().packed(1, dims).int(2, FLOAT).string(8, name);
  return w.bytes(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

/** ValueInfoProto of a tensor (float unless `elemType`, or `type`, says otherwise); a dim is a number (dim_value) or a string (dim_param). */
function valueInfo({ name, dims, type = FLOAT, elemType = type }) {
  const shape = new Writer();
  for (const d of dims) {
    const dim = new Writer();
    if (typeof d === 'string') dim.string(2, d);
    else dim.int(1, d);
    shape.message(1, dim);
  }
  const tensorType = new Writer().int(1, elemType).message(2, shape);
  const typeProto = new Writer().message(1, tensorType);
  return new Writer().string(1, name).message(2, typeProto);
}

/**
 * Serializes a ModelProto. graph: { name, nodes, inputs, outputs, initializers }; opsets: { domain: version }
 * ('' is ai.onnx). Returns the bytes ready for InferenceSession.create.
 */
export function encodeModel({ graph, opsets = { '': 17 }, irVersion = 8, producer = 'wasm-attention-peers' }) {
  const g = new Writer();
  for (const n of graph.nodes) g.message(1, node(n));
  g.string(2, graph.name ?? 'graph');
  for (const t of graph.initializers ?? []) g.message(5, tensor(t));
  for (const i of graph.inputs) g.message(11, valueInfo(i));
  for (const o of graph.outputs) g.message(12, valueInfo(o));
  const m = new Writer().int(1, irVersion);
  m.string(2, producer);
  m.message(7, g);
  for (const [domain, version] of Object.entries(opsets)) {
    const opset = new Writer();
    if (domain) opset.string(1, domain);
    opset.int(2, version);
    m.message(8, opset);
  }
  return m.finish();
}
