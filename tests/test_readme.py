"""The README's "From Python" examples run as written, so the README and the API cannot drift."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section under `## heading`."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_from_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks("From Python")
    assert len(blocks) >= 3
    joined = "\n".join(blocks)
    assert "from_rdkit" in joined and "g.align(" in joined and "ase" in joined
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md From Python block {k + 1}", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "(3, 128)" in printed and "(3, 64)" in printed and "RMSD" in printed
    assert (tmp_path / "embeddings.h5").is_file()
    assert namespace["stored"].names == ["paracetamol", "C2H6O"]
    identity = namespace["model"].config.embedding_identity
    assert identity > 0 and namespace["stored"].identity == identity  # read back from the file's attrs
    assert namespace["stored"].frame_free.shape == (2, identity)
