/**
 * OBS image processing, the watermark operation: `x-image-process=image/watermark,<params>` on a GET
 * returns the image with a text or image watermark, done by sharp (libvips). Parameters as OBS names
 * them: text_ (URL-safe base64 text), size_ (1–1000 px), color_ (URL-safe base64 of #RRGGBB),
 * type_ (URL-safe base64 font family), image_ (URL-safe base64 object key in the same bucket),
 * g_ (tl, top, tr, left, center, right, bl, bottom, br), x_ and y_ (margins, 0–4096), t_ (opacity 0–100),
 * rotate_ (0–360, text only).
 */
import sharp from 'sharp';
import { ObsError } from './obs.js';

/** Images larger than this are not processed (memory); the original can still be fetched. */
export const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
const GRAVITY = ['tl', 'top', 'tr', 'left', 'center', 'right', 'bl', 'bottom', 'br'] as const;
type Gravity = (typeof GRAVITY)[number];

export interface WatermarkSpec {
  text?: string;
  imageKey?: string;
  size: number;
  color: string;
  font: string;
  gravity: Gravity;
  x: number;
  y: number;
  opacity: number;
  rotate: number;
}

function bad(message: string): ObsError {
  return new ObsError(400, 'InvalidArgument', `x-image-process: ${message}`);
}
function b64url(v: string, what: string): string {
  if (!/^[A-Za-z0-9_-]+={0,2}$/.test(v)) throw bad(`${what} must be URL-safe base64`);
  return Buffer.from(v, 'base64url').toString('utf8');
}
function int(v: string, what: string, min: number, max: number): number {
  if (!/^\d{1,4}$/.test(v) || Number(v) < min || Number(v) > max) throw bad(`${what} must be a whole number from ${min} to ${max}`);
  return Number(v);
}

export function parseWatermark(process: string): WatermarkSpec {
  const [op, ...params] = process.split(',');
  if (op !== 'image/watermark') throw new ObsError(400, 'InvalidArgument', 'x-image-process: only image/watermark is supported');
  const spec: WatermarkSpec = { size: 40, color: '#000000', font: 'DejaVu Sans', gravity: 'br', x: 10, y: 10, opacity: 100, rotate: 0 };
  for (const p of params) {
    const i = p.indexOf('_');
    const [k, v] = i < 0 ? [p, ''] : [p.slice(0, i), p.slice(i + 1)];
    switch (k) {
      case 'text': spec.text = b64url(v, 'text_'); if (!spec.text || spec.text.length > 256) throw bad('text_ must be 1 to 256 characters'); break;
      case 'image': spec.imageKey = b64url(v, 'image_'); break;
      case 'size': spec.size = int(v, 'size_', 1, 1000); break;
      case 'color': spec.color = b64url(v, 'color_'); if (!/^#[0-9A-Fa-f]{6}$/.test(spec.color)) throw bad('color_ must encode #RRGGBB'); break;
      case 'type': spec.font = b64url(v, 'type_'); if (!/^[A-Za-z0-9 _-]{1,64}$/.test(spec.font)) throw bad('type_ must encode a font family name'); break;
      case 'g': if (!(GRAVITY as readonly string[]).includes(v)) throw bad(`g_ must be one of ${GRAVITY.join(', ')}`); spec.gravity = v as Gravity; break;
      case 'x': spec.x = int(v, 'x_', 0, 4096); break;
      case 'y': spec.y = int(v, 'y_', 0, 4096); break;
      case 't': spec.opacity = int(v, 't_', 0, 100); break;
      case 'rotate': spec.rotate = int(v, 'rotate_', 0, 360); break;
      default: throw bad(`unknown watermark parameter ${k}`);
    }
  }
  if ((spec.text === undefined) === (spec.imageKey === undefined)) throw bad('give exactly one of text_ and image_');
  return spec;
}

/** Pango markup must not carry the user's text as markup. */
function escapeMarkup(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

const MIME: Record<string, string> = { jpeg: 'image/jpeg', png: 'image/png', webp: 'image/webp', gif: 'image/gif', tiff: 'image/tiff', avif: 'image/avif' };

/** Applies the watermark; `mark` is the watermark image's bytes when the spec names one. */
export async function applyWatermark(input: Buffer, spec: WatermarkSpec, mark?: Buffer): Promise<{ body: Buffer; contentType: string }> {
  let meta: sharp.Metadata;
  try {
    meta = await sharp(input).metadata();
  } catch {
    throw new ObsError(400, 'InvalidArgument', 'x-image-process: the object is not an image this server can process');
  }
  const format = meta.format && MIME[meta.format] ? meta.format : null;
  if (!format || !meta.width || !meta.height) throw new ObsError(400, 'InvalidArgument', 'x-image-process: the object is not a JPEG, PNG, WebP, GIF, TIFF or AVIF image');
  let overlay: sharp.Sharp;
  if (spec.text !== undefined) {
    overlay = sharp({ text: { text: `<span foreground="${spec.color}">${escapeMarkup(spec.text)}</span>`, font: `${spec.font} ${spec.size}px`, rgba: true, dpi: 72 } });
    if (spec.rotate) overlay = sharp(await overlay.png().toBuffer()).rotate(spec.rotate, { background: { r: 0, g: 0, b: 0, alpha: 0 } });
  } else {
    try {
      overlay = sharp(mark!).ensureAlpha();
      await overlay.metadata();
    } catch {
      throw new ObsError(400, 'InvalidArgument', 'x-image-process: the watermark object is not an image');
    }
  }
  let markPng = await overlay.png().toBuffer();
  let m = await sharp(markPng).metadata();
  // A watermark larger than the image is scaled down to fit inside it.
  if ((m.width ?? 0) > meta.width || (m.height ?? 0) > meta.height) {
    markPng = await sharp(markPng).resize({ width: meta.width, height: meta.height, fit: 'inside' }).png().toBuffer();
    m = await sharp(markPng).metadata();
  }
  if (spec.opacity < 100) markPng = await sharp(markPng).ensureAlpha().linear([1, 1, 1, spec.opacity / 100], [0, 0, 0, 0]).png().toBuffer();
  const w = m.width ?? 0;
  const h = m.height ?? 0;
  const col = spec.gravity.endsWith('l') || spec.gravity === 'left' ? 'left' : spec.gravity.endsWith('r') || spec.gravity === 'right' ? 'right' : 'middle';
  const row = spec.gravity.startsWith('t') ? 'top' : spec.gravity.startsWith('b') ? 'bottom' : 'middle';
  const left = Math.max(0, col === 'left' ? spec.x : col === 'right' ? meta.width - w - spec.x : Math.round((meta.width - w) / 2) + spec.x);
  const top = Math.max(0, row === 'top' ? spec.y : row === 'bottom' ? meta.height - h - spec.y : Math.round((meta.height - h) / 2) + spec.y);
  const body = await sharp(input).composite([{ input: markPng, left: Math.min(left, meta.width - 1), top: Math.min(top, meta.height - 1) }]).toFormat(format as keyof sharp.FormatEnum).toBuffer();
  return { body, contentType: MIME[format]! };
}
