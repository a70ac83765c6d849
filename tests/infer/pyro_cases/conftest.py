import re

import pytest

from .common import refusal


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A documented refusal must be a refusal: the case raises a ValueError whose message
    matches the pattern in :data:`common.REFUSALS`, and nothing else passes for it."""
    pattern = refusal(pyfuncitem)
    if pattern is None:
        yield
        return
    original = pyfuncitem.obj

    def expect_refusal(**kwargs):
        with pytest.raises(ValueError) as info:
            original(**kwargs)
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))

    pyfuncitem.obj = expect_refusal
    try:
        yield
    finally:
        pyfuncitem.obj = original
