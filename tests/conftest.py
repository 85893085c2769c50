import logging
import shutil

import pytest


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory):
    """A registry holding a real BasicMotions model (version 1), trained once per session."""
    from model.registry import ModelRegistry
    from model.train import bootstrap

    root = tmp_path_factory.mktemp("registry")
    bootstrap(ModelRegistry(root), "basic-motions", epochs=8)
    logging.getLogger().info("test registry at %s", root)
    return str(root)


@pytest.fixture
def registry_copy(tmp_path, trained_registry):
    """A private copy of the trained registry, for tests whose jobs publish new versions."""
    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)
    return str(root)
