"""Command-line options of mlx-harmony-server that need no model."""

from mlx_harmony.server.cli import build_parser


def test_profiles_file_is_an_alias_of_profiles() -> None:
    parser = build_parser()
    assert parser.parse_args(["--profiles-file", "p.json"]).profiles == "p.json"
    assert parser.parse_args(["--profiles", "p.json"]).profiles == "p.json"
