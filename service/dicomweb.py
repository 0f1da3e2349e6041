"""A request's DICOMweb references checked at the door: only configured servers, and one frame."""

from pathlib import Path

from schemas.dicom import DicomOptions
from schemas.dicomweb import load_dicomweb_servers
from schemas.explain import ExplainOptions
from service.errors import InvalidRequest


def check_dicomweb(options: ExplainOptions, servers_file: Path | None) -> DicomOptions | None:
    """The job's DICOM options: for a `source`, its frame with the request's window. 422 for a
    server name that is not configured, a `store` without `output.dicom`, or a `dicom.frame`
    that contradicts `source.frame`."""
    servers = load_dicomweb_servers(servers_file).servers
    named = [ref.dicomweb for ref in (options.source, options.store) if ref is not None]
    for name in named:
        if name not in servers:
            known = ", ".join(sorted(servers)) or "none is configured"
            raise InvalidRequest(f"No DICOMweb server {name!r}; known: {known}.")
    if options.store is not None and not options.output.dicom:
        raise InvalidRequest(
            "`store` sends the derived DICOM objects: ask for them in `output.dicom`."
        )
    source = options.source
    if source is None:
        return options.dicom
    given = options.dicom
    if given is not None and "frame" in given.model_fields_set and given.frame != source.frame:
        raise InvalidRequest("Give the frame once: `source.frame`, not `dicom.frame`.")
    window = options.dicom.window if options.dicom is not None else None
    return DicomOptions(frame=source.frame, window=window)
