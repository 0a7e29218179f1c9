"""The one YAML reader: alias bombs, duplicate keys, deep nesting and foreign tags are refused in one
line, by the library and by every command that reads YAML, quickly and without a traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import time

import pytest

from helpers.paths import REPO, VENV_BIN
from nimbuild.errors import ManifestError
from nimbuild.util.yamlsafe import MAX_DEPTH, YamlProblem, load_or_raise, load_yaml


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: each level names the previous one nine times, 9**levels strings in ~700 bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias bomb": (alias_bomb(), "alias bomb"),
    "duplicate key": ("a: 1\nb: 2\na: 3\n", "duplicate key 'a'"),
    "recursive alias": ("a: &a {b: [*a]}\n", "recursive alias"),
    "deep block nesting": ("".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "x\n",
                           f"nested deeper than {MAX_DEPTH} levels"),
    "deep flow nesting": ("[" * 5000 + "]" * 5000, "not valid YAML"),
    "python object tag": ("a: !!python/object/apply:os.system ['true']\n", "unsupported YAML tag"),
    "python name tag": ("a: !!python/name:os.system ''\n", "unsupported YAML value"),
    "two documents": ("a: 1\n---\nb: 2\n", "expected a single document"),
    "unclosed flow": ("a: [b\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_yaml_is_refused_quickly(name):
    text, expected = HOSTILE[name]
    start = time.perf_counter()
    with pytest.raises(YamlProblem) as info:
        load_yaml(text)
    assert time.perf_counter() - start < 2
    assert expected in info.value.message and "\n" not in info.value.message


def test_alias_bomb_is_refused_before_it_grows():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(YamlProblem, match="alias bomb"):
        load_yaml(alias_bomb(12))  # 9**12 values if expanded
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 << 10  # KiB: < 100 MiB


def test_what_yaml_allows_still_reads():
    text = "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b, *b]\nwhen: 2001-12-14\nn: 0x10\nf: 1.5\n"
    data = load_yaml(text)[0]
    assert data["use"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2
    assert data["n"] == 16 and data["f"] == 1.5 and str(data["when"]) == "2001-12-14"


def test_local_tags_and_numbers_as_text_are_opt_in():
    text = "id: 0123\nquoted: '7'\nws: !workspace {files: [!name a.txt]}\n"
    with pytest.raises(YamlProblem, match="unsupported YAML tag !workspace"):
        load_yaml(text)
    data = load_yaml(text, local_tags=True, numbers_as_text=True)[0]
    assert data == {"id": "0123", "quoted": "7", "ws": {"files": ["a.txt"]}}
    assert load_yaml(text, local_tags=True)[0]["id"] == 83  # YAML 1.1 octal, as PyYAML reads it


def test_lines_are_recorded_per_value():
    data, lines = load_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n", with_lines=True)
    assert lines[("a", "b")] == 2 and lines[("a", "c", 1)] == 5 and data["a"]["c"] == ["x", "y"]


def test_problems_become_the_callers_error_with_origin_and_line():
    with pytest.raises(ManifestError) as info:
        load_or_raise("a: 1\na: 2\n", "m.yaml", ManifestError)
    assert str(info.value) == "m.yaml:2: duplicate key 'a'"


def _run(exe: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / exe), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name", ["alias bomb", "duplicate key", "deep block nesting", "python object tag"])
def test_every_command_that_reads_yaml_refuses_in_one_line(tmp_path, name):
    text, expected = HOSTILE[name]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    system = tmp_path / "system.json"
    system.write_text('{"gpus": [{"product": "L40S"}]}')
    before = bad.read_bytes()
    for exe, args in [("nim_list_model_profiles", ["-m", str(bad)]),
                      ("nimbuild", ["recipe", "check", str(bad)]),
                      ("nimbuild", ["profiles", "select", "-m", str(bad)])]:
        start = time.perf_counter()
        result = _run(exe, *args, env={"NIMBUILD_SYSTEM": str(system)})
        assert time.perf_counter() - start < 20
        assert result.returncode == 2, (exe, args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert bad.read_bytes() == before


def test_nemo_config_goes_through_the_same_reader(tmp_path):
    import io
    import tarfile

    from nimbuild.errors import SourceError
    from nimbuild.sources.nemo import read_config

    archive = tmp_path / "bomb.nemo"
    config = alias_bomb().encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
    with pytest.raises(SourceError, match="alias bomb"):
        read_config(archive)


def test_the_shipped_files_still_read():
    for path in [REPO / "profiles.yaml", *sorted((REPO / "examples").glob("*/recipe.yaml"))]:
        assert load_yaml(path.read_text())[0], path
