"""A bench rewrites only its own table in the README, and leaves a README without its markers alone."""

from bench.readme import write_table


def test_only_the_table_between_the_benchs_markers_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- bench:a:start -->\nold a\n<!-- bench:a:end -->\nmiddle\n"
        "<!-- bench:b:start -->\nold b\n<!-- bench:b:end -->\nend\n"
    )
    assert write_table("a", "| new |", readme)
    assert readme.read_text() == (
        "intro\n<!-- bench:a:start -->\n| new |\n<!-- bench:a:end -->\nmiddle\n"
        "<!-- bench:b:start -->\nold b\n<!-- bench:b:end -->\nend\n"
    )


def test_a_readme_without_the_markers_is_left_alone(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:a:start -->\nno end marker\n")
    assert not write_table("a", "| new |", readme)
    assert readme.read_text() == "intro\n<!-- bench:a:start -->\nno end marker\n"
    assert "no a markers" in capsys.readouterr().err
