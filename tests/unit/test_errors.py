from __future__ import annotations

import pytest

from dfagent import errors


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.BadRequest("x"), 400),
        (errors.RangeNotSatisfiable(10), 416),
        (errors.OriginHTTPError(401, {}, b""), 401),
        (errors.OriginHTTPError(404, {}, b""), 404),
        (errors.OriginTimeout("t"), 504),
        (errors.OriginError("o"), 502),
        (errors.IntegrityError("i"), 502),
        (errors.StorageFull("s"), 507),
        (errors.StartupError("s"), 500),
        (errors.Throttled("t"), 429),
        (errors.VortexError("v"), 502),
    ],
)
def test_status_table(error, status):
    assert errors.http_status(error) == status


def test_errors_are_also_stdlib_kinds():
    assert isinstance(errors.BadRequest("x"), ValueError)
    assert isinstance(errors.OriginTimeout("x"), TimeoutError)
    assert isinstance(errors.StorageFull("x"), OSError)
    assert errors.OriginError.source == "origin"
    assert errors.VortexError.source == "peer"
