from pathlib import Path

import pytest

from mlx_harmony.demo_model import DemoRecipe, demo_model_for_tests
from mlx_harmony.demo_model.tokenizer import write_tokenizer_files

# A recipe that trains in a second or two: for tests of the build machinery, not of the model.
QUICK_RECIPE = DemoRecipe(steps=6, examples=16, batch_size=2, self_check=False)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo model: built once per session, or $MLX_HARMONY_DEMO_MODEL."""
    return demo_model_for_tests(tmp_path_factory)


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer.json build per session (it takes seconds), shared by the builds below."""
    cache = Path(tmp_path_factory.getbasetemp()) / "mlx-harmony-home" / "tokenizers"
    write_tokenizer_files(tmp_path_factory.mktemp("tokenizer-warmup"), cache_dir=cache)
    return cache


@pytest.fixture
def home(tmp_path: Path, tokenizer_cache: Path) -> Path:
    """An empty MLX_HARMONY_HOME whose tokenizer cache is already warm."""
    home = tmp_path / "home"
    (home / "tokenizers").mkdir(parents=True)
    for f in tokenizer_cache.iterdir():
        (home / "tokenizers" / f.name).symlink_to(f)
    return home
