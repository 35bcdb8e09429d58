"""Compiled modules imported when first used (`from copymachine.heavy import cv2`), not when copymachine starts.

A venv can hold a pair that does not fit (numpy 2 beside an opencv built for numpy 1): `--help`, `doctor` and
`inspect` must still start there, and the command that needs the module must end in one line naming it, the
error and the usual fix (`import_fix`, which the probe of sd-scripts' Python uses too).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from copymachine.errors import EnvironmentProblem

# module -> the pip distribution that provides it
DISTRIBUTIONS = {"cv2": "opencv-python", "numpy": "numpy", "skimage": "scikit-image", "onnxruntime": "onnxruntime",
                 "PIL": "pillow"}

# What a module built for numpy 1 says when it meets numpy 2 (and the reverse).
_NUMPY_ABI_SIGNS = ("numpy.core.multiarray failed to import", "_ARRAY_API not found", "compiled using NumPy 1.x",
                    "numpy.dtype size changed", "module compiled against", "numpy._core")


def known_import_failure(error: str) -> bool:
    """Whether `import_fix` knows this failure's cause (not only "reinstall it")."""
    return any(sign in error for sign in _NUMPY_ABI_SIGNS) or "No module named" in error or ".so" in error


def import_fix(module: str, error: str, where: str = "that venv") -> str:
    """The usual fix for `import module` failing with `error`, to be done in `where` (that venv)."""
    top = module.split(".")[0]
    package = DISTRIBUTIONS.get(top, top)
    if any(sign in error for sign in _NUMPY_ABI_SIGNS):
        if top == "cv2" or "cv2" in error:
            return (f"opencv and numpy do not fit: pip install 'numpy<2' in {where}, or an opencv built for numpy 2 "
                    "(opencv-python>=4.10)")
        return f"{top} was built for another numpy: pip install 'numpy<2' in {where}, or a {package} built for numpy 2"
    if "No module named" in error:
        missing = error.split("No module named", 1)[1].strip().strip("'\"").split(".")[0]
        if missing == "library":
            return "install sd-scripts' own package: pip install -e . in the sd-scripts folder"
        return f"pip install {DISTRIBUTIONS.get(missing, missing)} in {where}"
    if "libGL" in error or ("lib" in error and ".so" in error):
        if top == "cv2":
            return (f"a system library is missing: pip install opencv-python-headless in {where} (or apt-get install "
                    "libgl1)")
        return f"a system library it needs is missing: reinstall it in {where}"
    return f"reinstall it in {where}: pip install --force-reinstall {package}"


class LazyModule(types.ModuleType):
    """Stands for a module; the first attribute read imports it."""

    def __getattr__(self, attribute: str) -> Any:
        if "_lazy_module" not in self.__dict__:
            name = self.__name__
            try:
                self.__dict__["_lazy_module"] = importlib.import_module(name)
            except Exception as e:  # a broken binary raises ImportError, AttributeError, OSError...
                message = f"{type(e).__name__}: {e}".splitlines()[0]
                raise EnvironmentProblem(f"{name} fails to import in copymachine's Python ({sys.executable}): "
                                         f"{message}; {import_fix(name, message)}") from None
        return getattr(self.__dict__["_lazy_module"], attribute)


cv2 = LazyModule("cv2")
numpy = LazyModule("numpy")
