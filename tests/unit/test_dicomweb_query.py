"""`dicomweb://` sources are checked before any request: the service they reach, their match keys, their refusals."""
import pytest

from enrich_ray.config import ConfigError
from enrich_ray.io.dicomweb import is_dicomweb, parse_query


def test_service_and_filters():
    q = parse_query("dicomweb://pacs.local:8042/dicom-web/?StudyDate=20261120&Modality=US")
    assert q.service == "http://pacs.local:8042/dicom-web"
    assert q.filters == (("StudyDate", "20261120"), ("Modality", "US"))
    assert parse_query("dicomwebs://pacs.local/wado-rs").service == "https://pacs.local/wado-rs"
    assert parse_query("dicomweb://[::1]:8042/dicom-web").service == "http://[::1]:8042/dicom-web"
    assert q.instance_uri("1.2", "1.2.3", "1.2.3.4") == "dicomweb://pacs.local:8042/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4"
    assert is_dicomweb("DICOMweb://h/x") and is_dicomweb("dicomwebs://h/x")
    assert not is_dicomweb("s3://bucket/x") and not is_dicomweb("./dicomweb")


def test_dates_in_iso_form_become_dicom_dates():
    assert dict(parse_query("dicomweb://h/dw?StudyDate=2026-11-20").filters) == {"StudyDate": "20261120"}
    assert dict(parse_query("dicomweb://h/dw?StudyDate=2026-11-18-2026-11-20").filters) == {"StudyDate": "20261118-20261120"}
    assert dict(parse_query("dicomweb://h/dw?SeriesDate=-20261120").filters) == {"SeriesDate": "-20261120"}
    assert dict(parse_query("dicomweb://h/dw?AccessionNumber=2026-11-20").filters) == {"AccessionNumber": "2026-11-20"}


@pytest.mark.parametrize("source, words", [
    ("dicomweb:///dicom-web", "malformed DICOMweb source"),
    ("http://pacs/dicom-web", "malformed DICOMweb source"),
    ("dicomweb://pacs:99999/dicom-web", "the port is not a number"),
    ("dicomweb://user:secret@pacs/dicom-web", "credentials do not go in the URL"),
    ("dicomweb://pacs/dicom-web?Modaliy=US", "did you mean Modality?"),
    ("dicomweb://pacs/dicom-web?limit=10", "query keys are DICOM attribute keywords"),
    ("dicomweb://pacs/dicom-web?Modality=US&Modality=CT", "comma-separated"),
    ("dicomweb://pacs/dicom-web?StudyDate=2026-11", "is not a date"),
])
def test_refusals_name_the_cause(source, words):
    with pytest.raises(ConfigError, match=words.replace("?", r"\?")) as err:
        parse_query(source)
    assert "secret" not in str(err.value)
