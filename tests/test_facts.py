"""Business facts in one place (issue #18): knowledge/facts.toml, read by the knowledge base,
the Rasa domain (rendered before training) and the config's own texts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voicebot_pbx.answers.knowledge import KnowledgeBase, knowledge_problems
from voicebot_pbx.answers.rasa_server import RasaServer, project_hash
from voicebot_pbx.cli import main
from voicebot_pbx.config import ConfigError, load_config
from voicebot_pbx.facts import FactsError, load_facts, render, text_problems

ROOT = Path(__file__).resolve().parents[1]
FACTS = load_facts(ROOT / "knowledge")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_render_fills_known_facts_and_names_the_place_of_an_unknown_one() -> None:
    facts = {"company": "Acme Power", "phone_hours": "9 am to 5 pm"}
    assert render("Call {{company}}, {{ phone_hours }}.", facts, where="x") == (
        "Call Acme Power, 9 am to 5 pm."
    )
    assert render("no placeholders {here}", facts, where="x") == "no placeholders {here}"
    with pytest.raises(FactsError, match=r"domain.yml: unknown fact \{\{adress\}\}"):
        render("At {{adress}}.", facts, where="domain.yml")
    assert text_problems("a\nAt {{adress}} or {{company}}\n", facts, file="f.md") == [
        "f.md:2: unknown fact {{adress}} (not in facts.toml)"
    ]


def test_a_broken_facts_file_is_an_error_naming_it(tmp_path: Path) -> None:
    assert load_facts(tmp_path) == {}  # no facts.toml: no facts
    for text, reason in (
        ("company = \n", "not valid TOML"),
        ("company = 3\n", "must be a non-empty string"),
        ('company = "  "\n', "must be a non-empty string"),
        ('company = "{{x}}"\n', "must not use other facts"),
    ):
        write(tmp_path / "facts.toml", text)
        with pytest.raises(FactsError, match=reason) as info:
            load_facts(tmp_path)
        assert str(tmp_path / "facts.toml") in str(info.value)


def test_the_knowledge_base_reads_its_facts_and_the_checker_names_unknown_ones(
    tmp_path: Path,
) -> None:
    write(tmp_path / "facts.toml", 'address = "7 Mill Lane"\n')
    write(tmp_path / "a.md", "# A\n\n## Where are you?\nWe are at {{address}}.\n")
    kb = KnowledgeBase.load(tmp_path)
    assert [p.text for p in kb.passages] == ["We are at 7 Mill Lane."]
    assert knowledge_problems(tmp_path) == []
    write(tmp_path / "b.md", "# B\n\n## When are you open?\nWe open {{phone_hours}}.\n")
    assert knowledge_problems(tmp_path) == [
        f"{tmp_path / 'b.md'}:4: unknown fact {{{{phone_hours}}}} (not in facts.toml)"
    ]
    with pytest.raises(FactsError, match="b.md: unknown fact"):
        KnowledgeBase.load(tmp_path)


def test_config_texts_are_rendered_from_the_knowledge_folder_and_a_profile_s_own(
    tmp_path: Path,
) -> None:
    main_kb = tmp_path / "kb"
    own_kb = tmp_path / "own"
    write(
        main_kb / "facts.toml",
        'company = "Acme Power"\nphone_hours = "9 to 5"\naddress = "7 Mill Lane"\n',
    )
    write(own_kb / "facts.toml", 'company = "Acme Water"\n')
    path = write(
        tmp_path / "v.toml",
        f'[llm]\nknowledge_dir = "{main_kb}"\n'
        f'[[profiles]]\nname = "water"\nport = 9100\ngreeting = "This is {{{{company}}}}."\n'
        f'knowledge_dir = "{own_kb}"\n',
    )
    config = load_config(path)
    assert config.dialogue.greeting.startswith("Hello, thanks for calling Acme Power.")
    assert config.dialogue.rules[0].reply == "We are open 9 to 5."
    assert config.llm.company == "Acme Power"
    assert config.profiles[0].greeting == "This is Acme Water."
    write(tmp_path / "bad.toml", '[dialogue]\nreprompt = "Call {{phone}}."\n')
    with pytest.raises(ConfigError, match=r"dialogue.reprompt: unknown fact \{\{phone\}\}"):
        load_config(tmp_path / "bad.toml")


def test_a_changed_fact_retrains_and_the_domain_rasa_trains_on_is_rendered(
    tmp_path: Path,
) -> None:
    project = tmp_path / "rasa"
    write(project / "config.yml", "language: en\n")
    write(project / "domain.yml", 'responses:\n  utter_hi:\n    - text: "This is {{company}}."\n')
    one = project_hash(project, {"company": "Acme"})
    assert one != project_hash(project, {"company": "Acme Power"})
    assert one == project_hash(project, {"company": "Acme"})
    server = RasaServer(project, tmp_path / "venv", models_dir=tmp_path / "models", facts={})
    with pytest.raises(Exception, match=r"unknown fact \{\{company\}\}"):
        server._rendered_domain("m")
    server.facts = {"company": "Acme"}
    rendered = server._rendered_domain("m")
    assert rendered.read_text(encoding="utf-8").endswith('- text: "This is Acme."\n')
    assert "{{company}}" in (project / "domain.yml").read_text(encoding="utf-8")


def test_check_config_names_a_fact_the_rasa_domain_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = tmp_path / "kb"
    write(kb / "facts.toml", (ROOT / "knowledge" / "facts.toml").read_text(encoding="utf-8"))
    write(kb / "a.md", "# A\n\n## Q?\nA.\n")
    project = tmp_path / "rasa"
    write(project / "config.yml", "language: en\n")
    domain = write(project / "domain.yml", 'responses:\n  u:\n    - text: "{{fax}}"\n')
    path = write(
        tmp_path / "v.toml",
        f'[llm]\nknowledge_dir = "{kb}"\n[rasa]\nproject_dir = "{project}"\n'
        '[turn]\ndetector = "silence"\n',
    )
    assert main(["check-config", "--config", str(path)]) == 1
    assert f"problem: {domain}:3: unknown fact {{{{fax}}}}" in capsys.readouterr().err


_STATED = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def test_the_shipped_texts_state_each_fact_only_through_facts_toml() -> None:
    """The business facts are written once: no knowledge file, Rasa response or built-in
    config text states a fact's value literally, and every placeholder is defined."""
    assert {"company", "phone_hours", "address", "postcode", "power_cut_line"} <= set(FACTS)
    texts = {
        path: path.read_text(encoding="utf-8")
        for path in [
            *sorted((ROOT / "knowledge").glob("*.md")),
            ROOT / "rasa_project" / "domain.yml",
            *sorted((ROOT / "voicebot_pbx" / "config").glob("*.py")),  # built-in texts
            ROOT / "voicebot.example.toml",
        ]
        if path.name not in ("README.md", "facts.py")  # facts.py: how {{name}} is filled in
    }
    for path, text in texts.items():
        assert text_problems(text, FACTS, file=str(path)) == []
        if path.suffix != ".md":  # comments may name the company
            text = "\n".join(
                line for line in text.splitlines() if not line.lstrip().startswith("#")
            )
        for name, value in FACTS.items():
            if len(value) >= 8:  # "105" may be part of something else
                assert value not in text, f"{path} states {name} ({value!r}) literally"
    used = {name for text in texts.values() for name in _STATED.findall(text)}
    assert set(FACTS) <= used, f"facts nothing reads: {set(FACTS) - used}"


def test_a_broken_facts_file_leaves_the_managed_rasa_server_buildable(tmp_path: Path) -> None:
    """serve builds its Rasa server even so: one log line, no facts (its training then names
    the fact the domain lacks and the rules answer)."""
    import dataclasses

    from structlog.testing import capture_logs

    from voicebot_pbx.ops.service import rasa_server_for

    write(tmp_path / "facts.toml", "company = \n")
    base = load_config()
    config = dataclasses.replace(
        base, llm=dataclasses.replace(base.llm, knowledge_dir=str(tmp_path))
    )
    with capture_logs() as logs:
        server = rasa_server_for(config)
    assert server.facts == {}
    assert [e for e in logs if e["event"] == "facts_unreadable"]


def test_a_fact_error_names_the_config_file_even_with_a_profile(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    write(kb / "facts.toml", 'company = "Acme"\nphone_hours = "9 to 5"\naddress = "1 Road"\n')
    path = write(
        tmp_path / "v.toml",
        f'[llm]\nknowledge_dir = "{kb}"\n[dialogue]\nreprompt = "{{{{fax}}}}"\n'
        '[[profiles]]\nname = "p"\nport = 9100\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: dialogue.reprompt: unknown fact")


def test_defaults_started_outside_the_checkout_say_where_facts_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default knowledge folder is relative ("knowledge"): started from another folder,
    the error says the file is not in that folder rather than only "no facts"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_config()
    message = str(raised.value)
    assert "{{company}}" in message
    assert f"knowledge/facts.toml, which is not in the current folder {tmp_path}" in message
    # Inside a folder that has it, the same defaults load.
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "facts.toml").write_text(
        'company = "Acme"\nphone_hours = "9 to 5"\naddress = "1 Road"\n', encoding="utf-8"
    )
    assert "Acme" in load_config().dialogue.greeting
