"""Uploaded photos are stored and served without their EXIF, XMP, IPTC or text blocks, the
picture's own bytes unchanged; files whose structure cannot be followed are refused, never
stored as they came (with their metadata)."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import httpx
import pytest

from bus.api.media import MediaStore, sniff
from bus.api.media_metadata import Unreadable, without_metadata
from bus.bootstrap import Runtime
from tests.api.conftest import LiveServer, pothole_form
from tests.media_files import (
    EOI,
    GIF_LOOP,
    IEND,
    IHDR,
    JFIF,
    PNG_SIGNATURE,
    QUANT,
    gif,
    gif_extension,
    gif_sub_blocks,
    jpeg,
    jpeg_scan,
    jpeg_segment,
    png,
    png_chunk,
    webp,
    webp_chunk,
)

OWNER = b"Zedekiah Quornwhistle, GPS 52.1 N 0.1 E, serial 4C0FFEE"


ICC = jpeg_segment(0xE2, b"ICC_PROFILE\x00colour")
SCAN = jpeg_scan() + EOI
JPEG = (
    b"\xff\xd8"
    + JFIF
    + jpeg_segment(0xE1, b"Exif\x00\x00" + OWNER)  # EXIF
    + jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x>" + OWNER + b"</x>")  # XMP
    + ICC
    + jpeg_segment(0xED, b"Photoshop 3.0\x00" + OWNER)  # IPTC
    + jpeg_segment(0xFE, OWNER)  # comment
    + QUANT
    + SCAN
)
IDAT = png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
PNG = (
    PNG_SIGNATURE
    + IHDR
    + png_chunk(b"tEXt", b"Author\x00" + OWNER)
    + png_chunk(b"eXIf", b"MM\x00*" + OWNER)
    + IDAT
    + png_chunk(b"tIME", b"\x07\xea\x0c\x07\x0c\x00\x00")
    + IEND
)
VP8X_WITH_EXIF_AND_XMP = webp_chunk(b"VP8X", bytes([0x0C, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
VP8X_PLAIN = webp_chunk(b"VP8X", bytes(10))
VP8 = webp_chunk(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2a\x01\x00\x01")
WEBP = webp(VP8X_WITH_EXIF_AND_XMP, VP8, webp_chunk(b"EXIF", OWNER), webp_chunk(b"XMP ", OWNER))


def test_a_jpeg_loses_exif_xmp_iptc_and_comments_and_keeps_its_picture() -> None:
    stripped = without_metadata(JPEG, "jpg")
    assert OWNER not in stripped
    assert stripped == b"\xff\xd8" + JFIF + ICC + QUANT + SCAN


def test_a_png_loses_its_text_exif_and_time_chunks() -> None:
    stripped = without_metadata(PNG, "png")
    assert OWNER not in stripped
    assert stripped == PNG_SIGNATURE + IHDR + IDAT + IEND


def test_a_webp_loses_its_exif_and_xmp_chunks_and_their_flags() -> None:
    stripped = without_metadata(WEBP, "webp")
    assert OWNER not in stripped
    assert stripped == webp(VP8X_PLAIN, VP8)


def test_a_jpeg_loses_its_jfif_thumbnails_and_keeps_the_jfif_header() -> None:
    # A thumbnail is a picture of its own, perhaps of the photo before it was cropped.
    with_thumbnail = jpeg_segment(0xE0, JFIF[4:-2] + b"\x01\x01" + OWNER[:3])
    extension = jpeg_segment(0xE0, b"JFXX\x00\x10" + OWNER)  # a JFXX thumbnail
    photo = b"\xff\xd8" + with_thumbnail + extension + QUANT + SCAN
    assert without_metadata(photo, "jpg") == b"\xff\xd8" + JFIF + QUANT + SCAN


def test_png_and_webp_keep_only_the_chunks_that_show_the_picture() -> None:
    # Content credentials (C2PA) may name the person; a private chunk may hold anything: kept
    # by a list of what to drop, both went out with the photo.
    credentials, private = png_chunk(b"caBX", OWNER), png_chunk(b"prVt", OWNER)
    shown = png_chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1))
    png_file = PNG_SIGNATURE + IHDR + shown + credentials + private + IDAT + IEND
    assert without_metadata(png_file, "png") == PNG_SIGNATURE + IHDR + shown + IDAT + IEND
    webp_file = webp(VP8X_PLAIN, VP8, webp_chunk(b"C2PA", OWNER), webp_chunk(b"XYZW", OWNER))
    assert without_metadata(webp_file, "webp") == webp(VP8X_PLAIN, VP8)


EXIF = jpeg_segment(0xE1, b"Exif\x00\x00" + OWNER)
#: A multi-picture file (MPF), as phones and cameras write: an index in the first picture's
#: APP2, the second picture (a preview, a depth map) after the first one's end, with its EXIF.
MPF_INDEX = jpeg_segment(0xE2, b"MPF\x00MM\x00*" + bytes(24))
MULTI_PICTURE = jpeg(b"first", before_scan=EXIF + MPF_INDEX) + jpeg(b"second", before_scan=EXIF)


def test_a_jpeg_is_cut_at_the_end_of_its_first_picture() -> None:
    stripped = without_metadata(MULTI_PICTURE, "jpg")
    assert OWNER not in stripped
    assert stripped == jpeg(b"first")
    assert without_metadata(jpeg() + b"trailer " + OWNER, "jpg") == jpeg()


def test_a_progressive_jpeg_loses_the_metadata_between_its_scans_and_keeps_every_scan() -> None:
    coded = b"\x11\xff\x00\x22\xff\xd0\x33"  # a stuffed 0xFF and a restart marker
    tables = jpeg_segment(0xC4, bytes(20))
    progressive = (
        b"\xff\xd8" + JFIF + QUANT + jpeg_scan(coded) + tables + EXIF
        + jpeg_segment(0xFE, OWNER) + jpeg_scan(coded) + b"\xff\xff" + EOI
    )  # fmt: skip
    stripped = without_metadata(progressive, "jpg")
    assert (
        stripped == b"\xff\xd8" + JFIF + QUANT + jpeg_scan(coded) + tables + jpeg_scan(coded) + EOI
    )


def test_a_webp_ends_with_its_riff_container() -> None:
    assert without_metadata(webp(VP8) + b"trailer " + OWNER, "webp") == webp(VP8)


def test_a_multi_picture_jpeg_upload_is_served_as_its_first_picture_without_metadata(
    http: httpx.Client, server: LiveServer, api_key: str
) -> None:
    response = http.post(
        "/requests.json",
        data=pothole_form(api_key),
        files={"media": ("photo.jpg", MULTI_PICTURE, "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    digest = hashlib.sha256(jpeg(b"first")).hexdigest()
    served = httpx.get(f"{server.url}/media/{digest}.jpg")
    assert served.status_code == 200
    assert served.content == jpeg(b"first")


#: Files whose structure breaks off after a metadata block: each must be refused, not kept.
UNREADABLE = {
    "jpeg-stray-byte": (
        "JPEG",
        b"\xff\xd8" + JFIF + b"\x00" + EXIF + QUANT + SCAN,
    ),
    "jpeg-truncated-segment": (
        "JPEG",
        b"\xff\xd8" + JFIF + EXIF + QUANT[:20],
    ),
    "png-truncated-chunk": ("PNG", PNG_SIGNATURE + IHDR + png_chunk(b"tEXt", OWNER) + IDAT[:10]),
    "gif-truncated-image": ("GIF", gif(extensions=gif_extension(0xFE, OWNER))[:-5]),
    "webp-chunk-past-the-end": (
        "WebP",
        webp(VP8X_WITH_EXIF_AND_XMP, webp_chunk(b"EXIF", OWNER))[:-9],
    ),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_a_file_whose_structure_cannot_be_followed_is_unreadable(name: str) -> None:
    _, data = UNREADABLE[name]
    with pytest.raises(Unreadable):
        without_metadata(data, sniff(data) or "")


def test_a_gif_loses_its_comments_and_xmp_and_keeps_its_loop() -> None:
    xmp = b"\x21\xff\x0bXMP DataXMP" + gif_sub_blocks(b"<x>" + OWNER + b"</x>")
    comment = gif_extension(0xFE, OWNER)
    timing = gif_extension(0xF9, b"\x00\x0a\x00\x00")
    sent = gif(extensions=comment + GIF_LOOP + xmp + timing) + b"trailer " + OWNER
    stripped = without_metadata(sent, "gif")
    assert OWNER not in stripped
    assert stripped == gif(extensions=GIF_LOOP + timing)


def test_pdf_files_are_stored_as_they_come() -> None:
    pdf = b"%PDF-1.7\n/Author (" + OWNER + b")"
    assert without_metadata(pdf, "pdf") == pdf


@pytest.mark.parametrize("name", UNREADABLE)
def test_an_upload_whose_metadata_cannot_be_removed_is_400_naming_it_and_not_stored(
    http: httpx.Client, api_key: str, runtime: Runtime, name: str
) -> None:
    kind, data = UNREADABLE[name]
    media_dir = Path(runtime.env.media_dir)
    before = sorted(media_dir.rglob("*"))
    response = http.post(
        "/requests.json",
        data=pothole_form(api_key),
        files=[
            ("media", ("fine.png", png(name.encode()), "image/png")),
            ("media", ("photo", data, "application/octet-stream")),
        ],
    )
    assert response.status_code == 400, response.text
    assert [e["description"] for e in response.json()] == [
        f"media 2: the {kind} could not be read to remove its metadata; send it again as a"
        " plain JPEG or PNG"
    ]
    assert sorted(media_dir.rglob("*")) == before  # none of the request's files is kept


def test_the_store_keeps_and_names_the_photo_without_its_metadata(tmp_path: Path) -> None:
    store = MediaStore(tmp_path, "https://311.example.org")
    media = store.save(JPEG)
    found = store.find(media.url.rsplit("/", 1)[1])
    assert found is not None
    path, content_type = found
    assert content_type == "image/jpeg"
    assert path.read_bytes() == without_metadata(JPEG, "jpg")
    assert OWNER not in path.read_bytes()
    assert store.save(without_metadata(JPEG, "jpg")) == media  # the same picture, stored once
