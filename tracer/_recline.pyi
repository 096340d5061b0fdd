# Type stub of the C extension tracer/_recline.c (used through tracer/recline.py).
from collections.abc import Callable

OFFSETS: dict[str, int]

def encode(samples: list, cpus: object, layouts: dict, layout_of: Callable, decode: Callable) -> list: ...

class Line:
    def __init__(self, spec: dict) -> None: ...
    def line(self, rec: bytes, cpu: int) -> tuple | None: ...
