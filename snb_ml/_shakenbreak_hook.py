"""Start-up hook (loaded by ``snb_ml_shakenbreak_hook.pth``): extend ``shakenbreak.cli`` when imported.

Costs one import-system lookup per process and imports nothing heavy; set ``SNB_ML_DISABLE_SNB_HOOK=1``
to switch it off.
"""

import os
import sys

TARGET = "shakenbreak.cli"
DISABLE_ENV = "SNB_ML_DISABLE_SNB_HOOK"


def _extend(module) -> None:
    try:
        from snb_ml.cli.shakenbreak import extend_run_command

        extend_run_command(module)
    except Exception as exc:  # never break ShakeNBreak itself
        import warnings

        warnings.warn(f"snb_ml could not add --relaxer to snb-run: {exc!r}", stacklevel=2)


class _ShakeNBreakCliFinder:  # a meta path finder needs only find_spec
    """Wraps the loader of ``shakenbreak.cli`` so the module is extended right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None and spec.loader is not None:
                original_exec = spec.loader.exec_module

                def exec_module(module, _original=original_exec):
                    _original(module)
                    _extend(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


def install() -> None:
    """Install the finder (or extend right away if ``shakenbreak.cli`` is already imported)."""
    if os.environ.get(DISABLE_ENV):
        return
    if TARGET in sys.modules:
        _extend(sys.modules[TARGET])
    elif not any(isinstance(finder, _ShakeNBreakCliFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ShakeNBreakCliFinder())


install()
