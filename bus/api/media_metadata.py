"""Uploaded photos lose their embedded metadata before they are stored and served publicly.

A phone's photo carries EXIF (GPS position, time, the device's make and serial number, the
owner's name), XMP and IPTC blocks, or PNG text chunks: personal data of the resident who took
it, which the public `/media/...` URL would hand to anyone. Only those blocks are removed; the
picture's bytes are copied as they are (no decoding: a JPEG's orientation tag goes with its
EXIF, so a photo taken sideways may show sideways). A GIF loses its comments and application
extensions (XMP), but not the ones that loop an animation.

A file ends with its first picture: a JPEG at the end of image, a PNG at IEND, a WebP with its
RIFF container, a GIF at its trailer. What follows (a phone's second picture with its own
EXIF, a trailer) is not kept. A file whose structure cannot be followed is refused
(Unreadable), never kept as it came: its metadata would be served with it, and a stray byte or
a cut segment is all it takes. PDF files are stored as they come.
"""

from __future__ import annotations

import re
import struct

#: JPEG segments kept: APP0 (JFIF's header, without its thumbnail; not a JFXX thumbnail), APP2
#: (an ICC colour profile; not the MPF index of further pictures, see _jpeg_metadata), APP14
#: (Adobe colour transform). Every other APPn (APP1 EXIF and XMP, APP13 IPTC, ...) and COM
#: (comments) is dropped.
_JPEG_KEPT_APPS = frozenset({0xE0, 0xE2, 0xEE})
_SOS, _EOI = 0xDA, 0xD9
#: In a scan's coded data a 0xFF byte is followed by 0x00 (a stuffed 0xFF) or by a restart
#: marker; anything else is the marker after the scan (0xFF fill bytes may come first).
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
#: PNG chunks kept beside the critical ones (upper-case first letter: the picture itself): those
#: that say how to show it, and an animation's. Every other ancillary chunk goes: text, EXIF,
#: time, C2PA content credentials (`caBX`, which may name the person), private ones; a list of
#: what to drop would let through whatever it does not know yet.
_PNG_KEPT = frozenset(
    {b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP", b"mDCv", b"cLLi", b"bKGD",
     b"hIST", b"pHYs", b"sPLT", b"acTL", b"fcTL", b"fdAT"}
)  # fmt: skip
#: WebP chunks kept: the picture, its alpha, colour profile and animation. EXIF, XMP, C2PA and
#: any other go; the VP8X flags that announce EXIF and XMP are cleared.
_WEBP_KEPT = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ICCP", b"ANIM", b"ANMF"})
_VP8X_EXIF_AND_XMP = 0x08 | 0x04
#: GIF extensions kept: graphic control (0xF9: delays, transparency) and plain text (0x01, drawn
#: as part of the picture). Comments (0xFE) and other application extensions (XMP, ...) are not.
_GIF_KEPT_EXTENSIONS = frozenset({0xF9, 0x01})
#: GIF application extensions kept, by their identifier: animation looping, a colour profile.
_GIF_KEPT_APPLICATIONS = frozenset({b"NETSCAPE2.0", b"ANIMEXTS1.0", b"ICCRGBG1012"})


class Unreadable(ValueError):
    """A file whose structure could not be followed, so its metadata could not be removed."""


def without_metadata(data: bytes, ext: str) -> bytes:
    """`data` (of type `ext`, as media.sniff names it) without its metadata blocks; Unreadable
    when its structure cannot be followed (the caller refuses it: see the module's text)."""
    strip = {"jpg": _jpeg, "png": _png, "webp": _webp, "gif": _gif}.get(ext)
    if strip is None:
        return data
    try:
        return strip(data)
    except (IndexError, ValueError, struct.error) as exc:
        raise Unreadable(f"{ext}: {exc}") from exc


def _jpeg(data: bytes) -> bytes:
    out = bytearray(data[:2])  # SOI
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise ValueError("not at a JPEG marker")
        while data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1]
        if marker == _EOI:
            # The end of the first picture, which is what viewers show: what follows (the
            # further pictures of a multi-picture file from a phone or camera, each with its own
            # EXIF and GPS, or a trailer some tool appended) is not kept.
            out += data[pos : pos + 2]
            return bytes(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            out += data[pos : pos + 2]
            pos += 2
            continue
        if marker < 0xC0 or marker == 0xD8:
            raise ValueError("not a marker of a JPEG's structure")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError("a JPEG segment runs past the file")
        payload = data[pos + 4 : end]
        if marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) > 14:
            # JFIF's own thumbnail: a picture of its own, perhaps of the photo before it was
            # cropped. The header is kept with no thumbnail (its width and height 0).
            out += b"\xff\xe0" + struct.pack(">H", 16) + payload[:12] + b"\x00\x00"
        elif not _jpeg_metadata(marker, payload):
            out += data[pos:end]
        pos = end
        if marker == _SOS:  # the scan's coded data follows, up to the next marker
            found = _JPEG_MARKER_IN_SCAN.search(data, pos)
            pos = found.start() if found else len(data)
            out += data[end:pos]
    raise ValueError("a JPEG without its end of image")


def _jpeg_metadata(marker: int, payload: bytes) -> bool:
    if marker == 0xE2:  # APP2: a colour profile is kept; MPF and FlashPix data are not
        return not payload.startswith(b"ICC_PROFILE\x00")
    if marker == 0xE0:  # APP0: JFIF's header is kept; a JFXX extension is a thumbnail
        return not payload.startswith(b"JFIF\x00")
    return marker == 0xFE or (0xE0 <= marker <= 0xEF and marker not in _JPEG_KEPT_APPS)


def _png(data: bytes) -> bytes:
    out = bytearray(data[:8])  # the signature
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            raise ValueError("a PNG chunk runs past the file")
        if kind[:1].isupper() or kind in _PNG_KEPT:
            out += data[pos:end]
        pos = end
        if kind == b"IEND":
            break
    return bytes(out)


def _webp(data: bytes) -> bytes:
    chunks = bytearray()
    # Only the RIFF container is the picture: what a tool appended after it is not kept.
    (riff_size,) = struct.unpack_from("<I", data, 4)
    limit = min(len(data), 8 + riff_size)
    pos = 12  # "RIFF", the size, "WEBP"
    while pos + 8 <= limit:
        kind = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        end = pos + 8 + size + (size & 1)  # chunks are padded to an even length
        if end > limit:
            raise ValueError("a WebP chunk runs past the file")
        chunk = bytearray(data[pos:end])
        if kind == b"VP8X":
            chunk[8] &= ~_VP8X_EXIF_AND_XMP & 0xFF
        if kind in _WEBP_KEPT:
            chunks += chunk
        pos = end
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + bytes(chunks)


def _gif(data: bytes) -> bytes:
    pos = 13 + _gif_colour_table(data[10])  # the header, the screen descriptor, its colours
    out = bytearray(data[:pos])
    while True:
        block = data[pos]
        if block == 0x3B:  # the trailer: what a tool appended after it is not kept
            out += data[pos : pos + 1]
            return bytes(out)
        if block == 0x2C:  # an image: its descriptor, colours, LZW code size, then its data
            start = pos + 10 + _gif_colour_table(data[pos + 9]) + 1
            end = _gif_sub_blocks_end(data, start)
            out += data[pos:end]
        elif block == 0x21:  # an extension: its label, then its data
            label = data[pos + 1]
            end = _gif_sub_blocks_end(data, pos + 2)
            application = label == 0xFF and data[pos + 3 : pos + 14] in _GIF_KEPT_APPLICATIONS
            if label in _GIF_KEPT_EXTENSIONS or application:
                out += data[pos:end]
        else:
            raise ValueError("not a GIF block")
        pos = end


def _gif_colour_table(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while size := data[pos]:  # IndexError when they run past the file
        pos += 1 + size
    return pos + 1
