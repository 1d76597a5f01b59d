"""Build of the compiled core (fluxcore._ext). Everything else is declared in pyproject.toml.

FLUXCORE_DEBUG=1 builds with asserts and Cython line tracing; FLUXCORE_ASAN=1 adds AddressSanitizer
and UBSan (run the tests with LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FLUXCORE_DEBUG") == "1"
ASAN = os.environ.get("FLUXCORE_ASAN") == "1"

compile_args = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function"]
link_args: list[str] = []
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
directives = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}
if DEBUG:
    compile_args = ["-O0", "-g3", "-UNDEBUG"]
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    macros.append(("FLUXCORE_DEBUG", "1"))
    directives.update({"linetrace": True, "boundscheck": True})
if ASAN:
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    link_args += ["-fsanitize=address,undefined"]

def extension(name: str) -> Extension:
    """One compiled module of fluxcore._ext, from its composition root `<name>.pyx`."""
    return Extension(
        f"fluxcore._ext.{name}",
        [f"fluxcore/_ext/{name}.pyx"],
        include_dirs=["fluxcore/_ext/include", numpy.get_include()],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


extensions = [extension("_log"), extension("_proto"), extension("_app"), extension("_search")]

setup(
    packages=["fluxcore", "fluxcore._ext", "fluxcore.app", "fluxcore.client", "fluxcore.server",
              "fluxcore.server.search"],
    package_dir={"fluxcore.server": "server", "fluxcore.server.search": "server/search"},
    ext_modules=cythonize(
        extensions, compiler_directives=directives, include_path=["fluxcore/_ext"]
    ),
)
