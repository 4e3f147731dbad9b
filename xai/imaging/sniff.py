"""Which format a byte string is, from its first bytes only; file names and declared content
types are never consulted, since a PACS bridge may send a PNG called ``x.dcm``.
"""

from __future__ import annotations

from xai.errors import InvalidImage, UnsupportedMediaType

ACCEPTED_FORMATS = ("png", "jpeg", "tiff", "dicom")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# Classic TIFF and BigTIFF, little ("II") and big ("MM") endian.
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DICOM_PREAMBLE_LENGTH = 128
_DICOM_PREFIX = b"DICM"
# Explicit VR codes (DICOM Part 5, Table 6.2-1), used to recognise a dataset with no preamble.
_VRS = frozenset(
    (
        b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
        b"UC UI UL UN UR US UT UV"
    ).split()
)


def sniff_format(data: bytes) -> str:
    """Return the format of an encoded image from its magic bytes.

    A DICOM file is recognised by "DICM" after its 128-byte preamble (DICOM Part 10). A bare
    dataset without preamble and file meta, as some older systems write, is accepted only when it
    starts with a well-formed element of group 0002 (file meta) or 0008 (identification) in little
    endian, or of group 0008 in explicit VR big endian; the decoder then reads it with pydicom's
    ``force=True``. Anything looser would let random bytes through as "DICOM".

    Args:
        data: The encoded bytes.

    Returns:
        One of "png", "jpeg", "tiff", "dicom".

    Raises:
        InvalidImage: code ``empty_file`` for zero bytes.
        UnsupportedMediaType: code ``unsupported_format`` (HTTP 415) for anything else.
    """
    if not data:
        raise InvalidImage("the uploaded file is empty (0 bytes)", code="empty_file")
    # DICOM first: a Part 10 preamble may itself be a TIFF header (dual-personality files).
    if data[_DICOM_PREAMBLE_LENGTH : _DICOM_PREAMBLE_LENGTH + 4] == _DICOM_PREFIX:
        return "dicom"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    if data[:4] in _TIFF_SIGNATURES:
        return "tiff"
    if is_bare_dicom(data):
        return "dicom"
    raise UnsupportedMediaType(
        f"the file is not an image this service reads (it starts with bytes {data[:8].hex(' ')}); "
        "send PNG, JPEG, TIFF or DICOM (Part 10 file or bare dataset)",
        code="unsupported_format",
    )


def is_bare_dicom(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM dataset written without preamble and file meta."""
    if len(data) < 8:
        return False
    # A dataset opens with one of the first elements of its group: (0002,0000)..(0002,0102) or
    # (0008,0000)..(0008,00FF) (character set, image type, SOP class...).
    little_group, little_element = int.from_bytes(data[0:2], "little"), int.from_bytes(data[2:4], "little")
    if little_group in (0x0002, 0x0008) and little_element < 0x0200:
        if data[4:6] in _VRS:
            return True
        # Implicit VR: a 4-byte length, even as every DICOM value length is, that fits in the file.
        length = int.from_bytes(data[4:8], "little")
        return length % 2 == 0 and length <= len(data) - 8
    big_group, big_element = int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")
    return big_group == 0x0008 and big_element < 0x0200 and data[4:6] in _VRS
