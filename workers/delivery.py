"""Sending a job's DICOM results to a STOW-RS destination of ``XAI_DICOMWEB_DESTINATIONS``. Torch-free.

All of a job's instances go in one STOW-RS request (multipart/related; type="application/dicom") to
``<url>/studies``, so a destination files them together or says per instance what it refused. A try
that may succeed later (no connection, a timeout, a 5xx) is repeated with exponential backoff; an
answer another try would not change (a 4xx, a Failed SOP Sequence) is not, so a wrong password
costs one request, not a retry storm. The outcome is a ``Delivery``, never an exception: a failed
delivery must not lose the job's results, and its reason is shown to whoever reads the job status.
So a reason names the destination, an HTTP status, Failure Reason codes or a kind of network error,
and our own SOP Instance UIDs at most: never the URL (it may carry a user and password), never what
a server wrote back (it may echo patient data).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
import tenacity
from dicomweb_client import DICOMwebClient

from xai.jobs import Delivery
from xai.settings import DicomwebDestination

log = logging.getLogger("xai.delivery")

MAX_BACKOFF_S = 300
# Far above any job's results: the body then goes with a Content-Length, since some STOW-RS servers
# and proxies refuse the chunked uploads dicomweb-client makes of larger bodies.
NO_CHUNKING = 1 << 40
_ADVICE = {
    401: "check the credentials file",
    403: "check that its account may store instances",
    404: "check its URL (STOW-RS goes to <url>/studies)",
    405: "check its URL (STOW-RS goes to <url>/studies)",
    413: "the request was too large for it",
    415: 'it does not take multipart/related; type="application/dicom"',
}


class CredentialsError(ValueError):
    """A destination's credentials file that cannot be used; the message says why and shows no secret."""


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` on every request of a session."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"


@dataclass(frozen=True)
class StowAnswer:
    """What a STOW-RS response says: the SOP Instance UIDs it stored, a Failure Reason (or None) per refusal."""

    stored: list[str]
    failure_reasons: list[int | None]
    listed: bool  # whether it had a Referenced or Failed SOP Sequence at all


class _Transient(Exception):
    """A try that may succeed later; ``problem`` says what went wrong without the URL."""

    def __init__(self, problem: str, reached: bool):
        super().__init__(problem)
        self.problem, self.reached = problem, reached


class _Final(Exception):
    """A delivery no further try would change; ``reason`` is the Delivery's."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def deliver(instances: list[bytes], name: str, destination: DicomwebDestination, *, attempts: int,
            backoff_s: float, timeout_s: float) -> Delivery:
    """STOW the Part 10 files ``instances`` to ``destination`` (called ``name`` in settings and reasons): up to
    ``attempts`` tries ``backoff_s``, then twice as long, ... apart, each waiting ``timeout_s`` at most.
    Delivered when the destination stored every instance; failed, with a reason, otherwise."""
    try:
        uids, datasets = _read(instances)
        session = _session(destination, name)
    except _Final as error:
        return _result(name, "failed", 0, [], error.reason)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_s, max=MAX_BACKOFF_S),
        retry=tenacity.retry_if_exception_type(_Transient), reraise=True, before_sleep=_log_retry(name))
    with session:
        try:
            client = _client(destination.url, session, timeout_s, name)
            answer = retrying(_stow, client, datasets, session, timeout_s, name)
        except _Transient as error:
            return _result(name, "failed", _tries(retrying), [], _unreachable(name, _tries(retrying), error))
        except _Final as error:
            return _result(name, "failed", _tries(retrying), [], error.reason)
    return _judge(name, uids, answer, _tries(retrying))


def load_auth(destination: DicomwebDestination) -> requests.auth.AuthBase | None:
    """The HTTP auth of ``destination``'s credentials file (None without one): ``{"username", "password"}`` for
    basic, ``{"token"}`` for bearer. CredentialsError for a file other users may read or one of another shape."""
    path = destination.credentials_file
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):  # a secret others can read is no longer one
            raise CredentialsError(f"its credentials file may be read by other users (mode "
                                   f"{stat.S_IMODE(mode):04o}): make it 0600 (0400 for a Kubernetes secret)")
        text = path.read_text()
    except OSError as error:
        raise CredentialsError(f"its credentials file cannot be read ({error.strerror})") from None
    try:
        fields = json.loads(text)
    except ValueError:
        raise CredentialsError("its credentials file is not JSON") from None
    return _auth(fields)


def _auth(fields: object) -> requests.auth.AuthBase:
    def given(*keys: str) -> bool:
        return isinstance(fields, dict) and set(fields) == set(keys) and \
            all(isinstance(fields[key], str) and fields[key] for key in keys)

    if given("username", "password"):
        return requests.auth.HTTPBasicAuth(fields["username"], fields["password"])
    if given("token"):
        return BearerAuth(fields["token"])
    raise CredentialsError('its credentials file must hold {"username": ..., "password": ...} or {"token": ...}')


def _read(instances: list[bytes]) -> tuple[list[str], list[pydicom.Dataset]]:
    """Parse our outputs once: dicomweb-client sends datasets, and the judgement needs their UIDs."""
    uids, datasets = [], []
    for n, data in enumerate(instances, 1):
        try:
            dataset = pydicom.dcmread(BytesIO(data))
            uids.append(str(dataset.SOPInstanceUID))
        except Exception:  # noqa: BLE001 -- pydicom raises many kinds for a broken file; ours would be a bug
            raise _Final(f"result {n} of {len(instances)} is not a DICOM file with a SOP Instance UID") from None
        datasets.append(dataset)
    if not datasets:
        raise _Final("the job has no DICOM results to send")
    return uids, datasets


def _session(destination: DicomwebDestination, name: str) -> requests.Session:
    """A session carrying the credentials file's auth, else a user and password in the URL."""
    try:
        auth = load_auth(destination)
    except CredentialsError as error:
        log.warning("credentials file %s of destination %s: %s", destination.credentials_file, name, error)
        raise _Final(f"did not send to destination {name!r}: {error}") from None
    parts = urlsplit(destination.url)
    session = requests.Session()
    session.headers["User-Agent"] = "xai-service delivery"
    session.auth = auth or (requests.auth.HTTPBasicAuth(parts.username, parts.password or "")
                            if parts.username else None)
    return session


def _client(url: str, session: requests.Session, timeout_s: float, name: str) -> DICOMwebClient:
    """A dicomweb-client with its own retries off: tenacity's are the ones counted and bounded."""
    parts = urlsplit(url)
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))  # userinfo goes in session.auth
    try:
        client = DICOMwebClient(bare, session=session, timeout=timeout_s, chunk_size=NO_CHUNKING)
    except ValueError:  # its message holds the URL
        raise _Final(f"destination {name!r} has a URL dicomweb-client cannot use") from None
    client.set_http_retry_params(retry=False)
    # Its "Host:" header otherwise lacks the port, and a server may build its Retrieve URLs from it.
    client.host = urlsplit(bare).netloc
    return client


def _stow(client: DICOMwebClient, datasets: list[pydicom.Dataset], session: requests.Session,
          timeout_s: float, name: str) -> StowAnswer:
    """One try: the STOW-RS answer, _Transient for what may pass, _Final for an answer without one."""
    responses: list[requests.Response] = []
    # dicomweb-client reads only a bare application/dicom+json answer; keep the raw one for the rest.
    session.hooks["response"] = [lambda response, *args, **kwargs: responses.append(response)]
    try:
        dataset = client.store_instances(datasets)
    except requests.HTTPError as error:
        return _refusal(error.response, name)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
        raise _Transient(_network_problem(error, timeout_s), reached=False) from None
    except requests.RequestException as error:
        raise _Final(f"could not send to destination {name!r}: {type(error).__name__}") from None
    except (KeyError, ValueError):  # a 2xx body it could not read
        dataset = pydicom.Dataset()
    answer = _from_dataset(dataset)
    if not answer.listed and responses:
        answer = _from_response(responses[-1]) or answer
    return answer


def _refusal(response: requests.Response, name: str) -> StowAnswer:
    """A 4xx or 5xx: retried if 5xx; a 4xx that lists its refusals (Orthanc answers 400, others 409) is read."""
    if response.status_code >= 500:
        raise _Transient(f"answered {response.status_code}", reached=True)
    answer = _from_response(response)
    if answer is not None and answer.listed:
        return answer
    advice = _ADVICE.get(response.status_code)
    raise _Final(f"destination {name!r} answered {response.status_code}" + (f": {advice}" if advice else ""))


def _from_dataset(dataset: pydicom.Dataset) -> StowAnswer:
    stored = [str(item.ReferencedSOPInstanceUID) for item in dataset.get("ReferencedSOPSequence", [])
              if "ReferencedSOPInstanceUID" in item]
    reasons = [int(item.FailureReason) if item.get("FailureReason") is not None else None
               for item in dataset.get("FailedSOPSequence", [])]
    listed = "ReferencedSOPSequence" in dataset or "FailedSOPSequence" in dataset
    return StowAnswer(stored, reasons, listed)


def _from_response(response: requests.Response) -> StowAnswer | None:
    """The answer of a DICOM JSON body whatever its Content-Type says (Orthanc's 400 has none)."""
    try:
        payload = response.json()
        return _from_dataset(pydicom.Dataset.from_json(payload)) if isinstance(payload, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _judge(name: str, uids: list[str], answer: StowAnswer, tries: int) -> Delivery:
    """Delivered when every one of our instances is in the Referenced SOP Sequence."""
    theirs = set(answer.stored)
    stored = [uid for uid in uids if uid in theirs]  # only ours, in our order
    refused = len(uids) - len(stored)
    if not refused:
        return _result(name, "delivered", tries, stored, None)
    if not answer.listed:
        reason = f"destination {name!r} did not say which instances it stored (no Referenced SOP Sequence)"
    else:
        reason = f"destination {name!r} refused {refused} of {len(uids)} instances ({_codes(answer)})"
    return _result(name, "failed", tries, stored, reason)


def _codes(answer: StowAnswer) -> str:
    codes = sorted({f"0x{code:04X}" for code in answer.failure_reasons if code is not None})
    if not codes:
        return "no Failure Reason given"
    return ("Failure Reason " if len(codes) == 1 else "Failure Reasons ") + ", ".join(codes)


def _unreachable(name: str, tries: int, error: _Transient) -> str:
    times = f"{tries} {'try' if tries == 1 else 'tries'}"
    if error.reached:
        return f"destination {name!r} {error.problem} after {times}: try again later"
    return f"could not reach destination {name!r} after {times}: {error.problem}"


def _network_problem(error: Exception, timeout_s: float) -> str:
    """What kind of network error, read from its causes: its message holds the URL."""
    causes = _causes(error)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "its host name does not resolve"
    if any(isinstance(c, (ssl.SSLError, requests.exceptions.SSLError)) for c in causes):
        return "TLS failed (check its certificate)"
    if any(isinstance(c, (requests.Timeout, TimeoutError, socket.timeout)) for c in causes):
        return f"no answer within {timeout_s:g} s"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return "connection reset"
    return "connection failed"


def _causes(error: BaseException) -> list[BaseException]:
    """The error and all it wraps: requests and urllib3 nest the OS error in causes, contexts, args and reasons."""
    seen: list[BaseException] = []
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        pending += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return seen


def _tries(retrying: tenacity.Retrying) -> int:
    return retrying.statistics.get("attempt_number", 0)


def _log_retry(name: str) -> Callable[[tenacity.RetryCallState], None]:
    def log_it(state: tenacity.RetryCallState) -> None:
        problem = state.outcome.exception() if state.outcome else None
        log.warning("delivery to %s: try %d failed (%s); next in %.1f s", name, state.attempt_number,
                    getattr(problem, "problem", "?"), state.next_action.sleep if state.next_action else 0.0)
    return log_it


def _result(name: str, status: Literal["delivered", "failed"], tries: int, stored: list[str],
            reason: str | None) -> Delivery:
    if reason:
        log.warning("delivery to %s failed after %d tries: %s", name, tries, reason)
    return Delivery(destination=name, status=status, attempts=tries, stored_sop_instance_uids=stored,
                    reason=reason, updated_at=datetime.now(UTC).isoformat())
