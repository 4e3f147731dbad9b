"""STOW-RS in (DICOM PS3.18 10.5): the parts of a multipart/related request, and the standard response.

Torch-free and HTTP-free: ``service.routes.dicomweb`` reads the body and submits each instance; this
module splits the body (python-multipart's streaming parser, which takes any multipart subtype),
says which routing rule an instance falls under, and writes the Store Instances Response Module
(PS3.18 Table 10.5.3-2) as DICOM JSON: a Referenced SOP Sequence item per accepted instance, whose
Retrieve URL is its job's status URL and whose private element (0009,1001) holds the job id, and a
Failed SOP Sequence item per refused one with its Failure Reason and, in private elements, the
service's error code and message (never an attribute of the instance beyond its SOP UIDs).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from python_multipart.multipart import MultipartParser, parse_options_header

from xai.errors import ServiceError, UnsupportedMediaType
from xai.imaging.defined_terms import BODY_PARTS, MODALITIES
from xai.settings import DicomRoute

DICOM = "application/dicom"
PRIVATE_GROUP, PRIVATE_CREATOR = 0x0009, "XAI_SERVICE"
# PS3.4 Annex GG.4 Failure Reasons a STOW-RS response may give.
OUT_OF_RESOURCES, CANNOT_UNDERSTAND, PROCESSING_FAILURE = 0xA700, 0xC000, 0x0110


@dataclass
class Part:
    headers: dict[str, str]
    data: bytes


def split_parts(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart/related body of application/dicom instances.

    Raises:
        UnsupportedMediaType: ``invalid_stow_request`` when the request is not multipart/related of
            application/dicom with a boundary.
    """
    media, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    part_type = options.get(b"type", DICOM.encode()).strip(b'"').lower()
    if media.lower() != b"multipart/related" or not boundary or part_type != DICOM.encode():
        raise UnsupportedMediaType('STOW-RS takes Content-Type: multipart/related; type="application/dicom"; '
                                   "boundary=...; one DICOM Part 10 file per part", code="invalid_stow_request")
    parts: list[Part] = []
    header, value, data = bytearray(), bytearray(), bytearray()
    headers: dict[str, str] = {}

    def header_end() -> None:
        headers[header.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        header.clear()
        value.clear()

    def part_end() -> None:
        parts.append(Part(dict(headers), bytes(data)))
        headers.clear()
        data.clear()

    parser = MultipartParser(boundary, {
        "on_header_field": lambda b, start, end: header.extend(b[start:end]),
        "on_header_value": lambda b, start, end: value.extend(b[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda b, start, end: data.extend(b[start:end]),
        "on_part_end": part_end,
    })
    parser.write(body)
    parser.finalize()
    return parts


@dataclass
class Identity:
    """What an instance says of itself that routing and the response need (read without its pixels)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    modality: str | None = None
    body_part: str | None = None

    def describe(self) -> str:
        """What routing looked at, for a message: free text where a defined term belongs can identify, so
        only defined terms are echoed (as ``xai.imaging.dicom`` keeps them)."""
        def shown(value: str | None, terms: frozenset[str]) -> str:
            if not value:
                return "(none)"
            return value if value.strip() in terms else "(not a defined term)"

        sop_class = self.sop_class_uid if UID(self.sop_class_uid).is_valid else "(none or malformed)"
        return (f"Modality {shown(self.modality, MODALITIES)}, Body Part Examined {shown(self.body_part, BODY_PARTS)}"
                f", SOP Class UID {sop_class}")


def identify(data: bytes) -> Identity:
    """The instance's SOP UIDs, Modality and Body Part Examined; empty when the header cannot be read."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM", stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID", "Modality", "BodyPartExamined"])
    except Exception:  # noqa: BLE001 -- any unreadable header is the same answer: we cannot understand it
        return Identity()
    return Identity(str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or ""),
                    ds.get("Modality"), ds.get("BodyPartExamined"))


def route_for(identity: Identity, routes: list[DicomRoute]) -> DicomRoute | None:
    """The first rule of ``XAI_DICOM_ROUTES`` the instance matches."""
    return next((r for r in routes if r.matches(identity.modality, identity.body_part, identity.sop_class_uid)), None)


def failure_reason(error: ServiceError) -> int:
    """PS3.4 GG.4's reason for a refused instance: we lacked room, could not read it, or could not process it."""
    if error.http_status in (413, 429, 503):
        return OUT_OF_RESOURCES
    if error.code.group == "upload":
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


@dataclass
class StowResponse:
    stored: list[Dataset] = field(default_factory=list)
    failed: list[Dataset] = field(default_factory=list)

    def accept(self, identity: Identity, job_id: str, status_url: str) -> None:
        item = _referenced(identity)
        item.RetrieveURL = status_url
        item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", job_id)
        self.stored.append(item)

    def refuse(self, identity: Identity, error: ServiceError) -> None:
        item = _referenced(identity)
        item.FailureReason = failure_reason(error)
        block = item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x02, "LO", error.code.value)
        block.add_new(0x03, "LT", error.message)
        self.failed.append(item)

    @property
    def http_status(self) -> int:
        """200 all stored, 202 some refused, 409 none stored (PS3.18 Table 10.5.3-1)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def to_json(self) -> dict:
        response = Dataset()
        if self.stored:
            response.ReferencedSOPSequence = self.stored
        if self.failed:
            response.FailedSOPSequence = self.failed
        return response.to_json_dict()


def _referenced(identity: Identity) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = identity.sop_class_uid
    item.ReferencedSOPInstanceUID = identity.sop_instance_uid
    return item
