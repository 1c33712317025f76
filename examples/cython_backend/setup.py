"""Build the fastlr_backend_demo extension: a library that embeds fastlr through its C API.

    python setup.py build_ext --inplace

needs Cython >= 3.1, a C compiler and fastlr importable (installed, or its built tree on
PYTHONPATH). The include path is where Cython finds ``fastlr/_kernels.pxd`` and
``fastlr/_schedules.pxd``; at run time the extension imports ``fastlr._kernels`` and
``fastlr._schedules`` and calls their compiled functions, so it links against nothing and
needs no OpenMP of its own.
"""

import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

import fastlr

# The update loops are fastlr's own compiled code; this module only validates and calls,
# so a light optimisation level keeps its build quick. No -ffast-math anywhere near fastlr.
COMPILE_ARGS = [] if sys.platform == "win32" else ["-O1"]

extensions = [
    Extension(
        "fastlr_backend_demo",
        ["fastlr_backend_demo.pyx"],
        # fastlr.get_include() for the .pxd files; numpy.get_include() for the NumPy headers
        # (this module uses typed memoryviews only, but a backend that `cimport numpy`s
        # needs them, and they cost nothing here).
        include_dirs=[fastlr.get_include(), numpy.get_include()],
        extra_compile_args=COMPILE_ARGS,
    )
]

setup(
    name="fastlr-backend-demo",
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
)
