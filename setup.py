# Metadata lives in setup.cfg. This file adds what setup.cfg cannot say: the BPF sources (bpf/, kept at
# the top of the repository by the project's layout) and the demo's workload are copied into the built
# package as tracer/bpf/ and tracer/examples/, so a wheel or a non-editable `pip install .` has them
# (tracer.kenv.BPF_DIR looks there first, then beside the package in a source checkout).
# It also builds tracer._recline (tracer/_recline.c: `trace --json`'s line in C) against bpf/record.h, the
# one record layout. Optional: where it cannot be built (no compiler, no Python.h) the install still
# succeeds and tracer uses its Python line functions (`tracer doctor` says which).
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = {"bpf": ["bpf/*.c", "bpf/*.h"], "examples": ["examples/missing_data.py"]}


class BuildWithBpf(build_py):
    def run(self) -> None:
        super().run()
        for target, patterns in SHIPPED.items():
            for pattern in patterns:
                for src in sorted(HERE.glob(pattern)):
                    dest = Path(self.build_lib) / "tracer" / target / src.name
                    self.mkpath(str(dest.parent))
                    self.copy_file(str(src), str(dest))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [str(Path(self.build_lib) / "tracer" / target / src.name)
                 for target, patterns in SHIPPED.items() for pattern in patterns for src in HERE.glob(pattern)]
        return super().get_outputs(include_bytecode) + extra


RECLINE = Extension("tracer._recline", sources=["tracer/_recline.c"], depends=["bpf/record.h"], include_dirs=["bpf"],
                    extra_compile_args=["-O2", "-Wall", "-Wextra"], optional=True)

setup(cmdclass={"build_py": BuildWithBpf}, ext_modules=[RECLINE])
