"""Recipes: several sealed models in one config, one active, switched between batches.

    model: {path: bottle.fsac.onnx}          # recipe "default"
    recipes:
      cap: {path: cap.fsac.onnx, logit_threshold: 1.5}

A switch (POST /v1/recipe {"recipe": "cap"}, or a trigger request naming a recipe) loads and
verifies the recipe's file first (once; kept loaded); a file that fails any check is refused
and the recipe in force keeps serving, as SIGHUP does. The scorer takes one model per batch,
so a switch lands between batches and no frame is dropped. Every record names its recipe
(and, as before, the model file and its hash).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from fsac.errors import FsacError

from .backends import ModelHandle

log = logging.getLogger("fsac.runtime")

DEFAULT = "default"


def validate_recipes(recipes: dict[str, Any] | None) -> None:
    """What the settings model (config_model.RecipeConfig) cannot say: the reserved name."""
    if recipes and DEFAULT in recipes:
        raise FsacError(f"recipes.{DEFAULT}: 'default' is model.path's recipe; choose another name")


class RecipeBook:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.entries = dict(daemon.cfg.recipes or {})
        self.handles: dict[str, ModelHandle] = {DEFAULT: daemon.handle}
        self.active = DEFAULT
        self.switches = 0
        self.refused = 0
        self._lock = threading.Lock()

    def handle(self, name: str | None) -> ModelHandle:
        """The recipe's model, loaded (and verified) on first use. Raises FsacError."""
        name = name or self.active
        with self._lock:
            if name in self.handles:
                return self.handles[name]
            if name not in self.entries:
                raise FsacError(f"recipe {name!r}: not configured (recipes: {', '.join([DEFAULT, *self.entries])})")
            e = self.entries[name]
            cfg = self.daemon.cfg.model.model_copy(update={
                "path": e.path, "logit_threshold": e.logit_threshold, "threshold": e.threshold})
            try:
                handle = ModelHandle(cfg)
            except FsacError as err:
                self.refused += 1
                raise FsacError(f"recipe {name!r} refused ({err}); still serving recipe {self.active!r}") from None
            log.info("recipe %s loaded: %s", name, handle.current.describe())
            self.handles[name] = handle
            return handle

    def switch(self, name: str) -> ModelHandle:
        handle = self.handle(name)
        self.daemon.handle = handle  # the scorer picks it up at its next batch
        self.active = name
        self.switches += 1
        log.info("recipe %s active", name)
        return handle

    def name_of(self, model: Any) -> str:
        """The recipe of a LoadedModel (the one a batch was scored with)."""
        with self._lock:
            for name, h in self.handles.items():
                if h.current is model:
                    return name
        return self.active

    def http_switch(self, headers: Any, body: bytes) -> tuple[int, str]:
        from .trigger_io import check_token

        denied = check_token(self.daemon.cfg, headers)
        if denied:
            return 401, json.dumps({"error": denied})
        try:
            data = json.loads(body)
            name = data["recipe"] if isinstance(data, dict) else None
            if not isinstance(name, str):
                raise FsacError('request: expected {"recipe": NAME}')
            model = self.switch(name).current
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError):
            return 400, json.dumps({"error": 'request: expected {"recipe": NAME}'})
        except FsacError as e:
            return 409, json.dumps({"error": str(e), "recipe": self.active})
        return 200, json.dumps({"recipe": name, "model": model.name, "model_sha256": model.sha256})
