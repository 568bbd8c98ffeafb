/** Why a call was refused. Stable strings: match on them, not on the message. */
export type AttentionErrorCode =
  | 'INVALID_TENSOR'
  | 'INVALID_DTYPE'
  | 'INVALID_DIMS'
  | 'SHAPE_MISMATCH'
  | 'INVALID_OPTION'
  | 'INVALID_ARGUMENT'
  | 'UNSUPPORTED'
  | 'OUT_OF_MEMORY'
  | 'WORKER_FAILED'
  | 'CACHE_FULL'
  | 'BUSY'
  | 'DISPOSED';

/**
 * The one error class every refused call throws, before any kernel runs.
 * `argument` names the offending argument (`q`, `k.dims[3]`, `options.scale`, ...).
 */
export class AttentionError extends Error {
  readonly code: AttentionErrorCode;
  readonly argument: string | undefined;

  constructor(code: AttentionErrorCode, message: string, argument?: string) {
    super(message);
    this.name = 'AttentionError';
    this.code = code;
    this.argument = argument;
  }
}

/** Bytes in human units: 2.1 GiB. */
export function human(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) [value, unit] = [value / 1024, unit + 1];
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}
