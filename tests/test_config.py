"""Settings defined once (nni_adabert.config): every field reaches the CLI and the NNI trials
with the same name and default, and comes back as the same config."""

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from nni_adabert import config as config_module
from nni_adabert import trial
from nni_adabert.cli import build_parser
from nni_adabert.config import (ArchitectureConfig, RetrainConfig, SearchConfig, TrainingConfig, add_options,
                                from_options, options_table)
from nni_adabert.errors import UserError

COMMANDS = {"search": SearchConfig, "retrain": RetrainConfig}


def subparser(command: str) -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions[0]
    return actions.choices[command]


def options(parser: argparse.ArgumentParser) -> dict:
    """``{dest: action}`` of every option of ``parser``."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_is_an_option_of_the_cli_and_the_trial_with_the_same_default(command):
    config_cls = COMMANDS[command]
    cli, nni_trial = options(subparser(command)), options(trial.build_parser(command))
    for f in fields(config_cls):
        default = config_cls().__getattribute__(f.name)
        for where, found in (("cli", cli), ("trial", nni_trial)):
            assert f.name in found, f"{config_cls.__name__}.{f.name} is not an option of the {command} {where}"
            assert found[f.name].default == default, (where, f.name)
        # One name everywhere: --arc-lr for arc_lr, --no-probe-kd for a flag that is on by default.
        flag = ("--no-" if default is True else "--") + f.name.replace("_", "-")
        assert flag in cli[f.name].option_strings and flag in nni_trial[f.name].option_strings


@pytest.mark.parametrize("command", COMMANDS)
def test_parsed_defaults_give_the_default_config_and_flags_reach_it(command):
    config_cls = COMMANDS[command]
    head = [command, "--teacher", "t", "--output-dir", "o"] + (["--arch", "a"] if command == "retrain" else [])
    assert from_options(config_cls, build_parser().parse_args(head)) == config_cls()
    assert from_options(config_cls, trial.build_parser(command).parse_args([])) == config_cls()
    final_kd = config_cls().final_kd   # on for a retraining, off for a search: its flag switches it
    changed = from_options(config_cls, build_parser().parse_args(
        head + ["--lr", "0.05", "--min-lr", "0.001", "--no-final-kd" if final_kd else "--final-kd",
                "--optimizer", "sgd", "--train-limit", "none"]))
    assert (changed.lr, changed.min_lr, changed.final_kd, changed.optimizer) == (0.05, 0.001, not final_kd, "sgd")
    base_kd = ["--no-probe-kd"] + ([] if final_kd else ["--final-kd"])   # the final-logit term alone
    assert not from_options(config_cls, build_parser().parse_args(head + base_kd)).probe_kd
    assert changed.train_limit is None   # `none` sets an optional setting to None
    # An on/off setting takes both forms in every command, whatever its default there.
    for flag, value in (("--group-by-length", True), ("--no-group-by-length", False)):
        for parsed in (build_parser().parse_args(head + [flag]), trial.build_parser(command).parse_args([flag])):
            assert from_options(config_cls, parsed).group_by_length is value


def test_the_tuner_sets_any_setting_by_its_field_name():
    args = trial.trial_settings("search", [], {"arc_lr": "0.01", "probe-kd": "false", "final_kd": True,
                                               "tau_end": 0.2, "full": "1", "max_params": "5000000"})
    config = from_options(SearchConfig, args)
    assert (config.arc_lr, config.probe_kd, config.final_kd, config.tau_end, config.full, config.max_params) == \
        (0.01, False, True, 0.2, True, 5_000_000)
    with pytest.raises(UserError, match="trial parameter 'final_kd': 'maybe' is not true or false"):
        trial.trial_settings("search", [], {"final_kd": "maybe"})
    with pytest.raises(UserError, match="unknown trial parameter 'arc_learning_rate'"):
        trial.trial_settings("search", [], {"arc_learning_rate": 0.01})


def test_configs_split_by_what_they_configure():
    names = lambda cls: {f.name for f in fields(cls)}  # noqa: E731
    # A search is training plus architecture optimisation plus its own few; a retraining has no
    # search-only setting (β, the space, the architecture's optimizer).
    assert names(SearchConfig) == names(TrainingConfig) | names(ArchitectureConfig) | {
        "beta", "embed_dim", "k_max", "space", "finetune_epochs", "candidates", "candidate_epochs"}
    # A retraining re-estimates BatchNorm's statistics before each dev evaluation; the search does not.
    assert names(RetrainConfig) == names(TrainingConfig) | {"precise_bn_batches"}
    assert RetrainConfig().precise_bn_batches == 200
    assert RetrainConfig().optimizer == "adamw" and SearchConfig().optimizer == "sgd"
    assert SearchConfig().group_by_length and not RetrainConfig().group_by_length
    # The fine-tuning after a search is a retraining of the search's data and loss, with a
    # retraining's optimizer.
    finetune = SearchConfig(finetune_epochs=2, gamma=0.5, lr=0.3, train_limit=7).finetune_config()
    assert finetune == RetrainConfig(epochs=2, gamma=0.5, train_limit=7, augmented_limit=20000, final_kd=False,
                                     group_by_length=True, precise_bn_batches=0)
    # Each candidate of an undecided search trains with a retraining's recipe on the search's rows and with
    # the search's loss (an ablation such as the paper's Base-KD reaches the candidates), the final-logit term on.
    candidate = SearchConfig(candidate_epochs=2, gamma=0.5, lr=0.3, train_limit=7, seed=3).candidate_config()
    assert candidate == RetrainConfig(epochs=2, gamma=0.5, train_limit=7, augmented_limit=20000, seed=3,
                                      group_by_length=True, precise_bn_batches=0)
    base_kd = SearchConfig(probe_kd=False, final_kd=True, gamma=1.0, temperature=2.0).candidate_config()
    assert (base_kd.probe_kd, base_kd.final_kd, base_kd.gamma, base_kd.temperature) == (False, True, 1.0, 2.0)
    assert SearchConfig(final_kd=True, final_kd_mse=True).candidate_config().final_kd_mse  # the form of its term too
    assert SearchConfig().candidate_config() == RetrainConfig(epochs=1, train_limit=20000, augmented_limit=20000,
                                                              group_by_length=True, precise_bn_batches=0)  # as before
    # Both read the search's rows in the search's order: grouped by length by default (a retraining: plain).
    plain = SearchConfig(group_by_length=False, finetune_epochs=1)
    assert not plain.finetune_config().group_by_length and not plain.candidate_config().group_by_length
    assert RetrainConfig(lr=0.004).final_lr == pytest.approx(4e-5) and SearchConfig().final_lr == 5e-4


def test_a_setting_added_later_names_a_run_only_when_it_is_not_its_default():
    # Runs recorded before --final-kd-mse and --pooling existed keep their identity (found finished, resumed) ...
    added = ("final_kd_mse", "pooling")
    before = {k: v for k, v in RetrainConfig().to_dict().items() if k not in added}
    assert RetrainConfig().identity() == before and set(added) <= set(RetrainConfig().to_dict())
    assert SearchConfig(seed=2).identity() == {k: v for k, v in SearchConfig(seed=2).to_dict().items()
                                               if k not in added}
    # ... and a run that uses one is another run.
    assert RetrainConfig(final_kd_mse=True).identity() == {**before, "final_kd_mse": True}
    assert SearchConfig(seed=2, pooling="max").identity()["pooling"] == "max"


@pytest.mark.parametrize("bad, message", [
    (dict(epochs=0), "search setting epochs must be an integer >= 1, got 0"),
    (dict(gamma=1.5), r"search setting gamma \(the KD weight\) must be in \[0, 1\], got 1.5"),
    (dict(dropout=1.0), r"search setting dropout must be in \[0, 1\), got 1.0"),
    (dict(lr=0.0), "search setting lr must be a finite number > 0, got 0.0"),
    (dict(grad_clip=float("nan")), "search setting grad_clip must be a finite number >= 0, got nan"),
    (dict(optimizer="adam"), "search setting optimizer must be one of 'sgd', 'adamw', got 'adam'"),
    (dict(full="yes"), "search setting full must be true or false, got 'yes'"),
    (dict(tau_start=0.1, tau_end=0.5), r"tau_start \(0.1\) must be >= tau_end \(0.5\)"),
    (dict(probe_kd=False), "probe_kd and final_kd are both off"),
    (dict(final_kd_mse=True), "search setting final_kd_mse is on but final_kd is off"),
])
def test_bad_settings_are_one_clear_line(bad, message):
    with pytest.raises(UserError, match=message):
        SearchConfig(**bad)


def test_add_options_only_some_fields():
    parser = argparse.ArgumentParser()
    add_options(parser, SearchConfig, only=("embed_dim", "k_max"))
    assert set(options(parser)) == {"embed_dim", "k_max"}
    assert vars(parser.parse_args(["--k-max", "3"])) == {"embed_dim": 128, "k_max": 3}


def test_the_cli_reference_lists_the_options_the_code_generates(tmp_path):
    """docs/cli.md's settings tables are generated (python -m nni_adabert.config docs/cli.md): a
    setting added or changed without regenerating them fails here."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    copy = tmp_path / "cli.md"
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    config_module._write_docs(str(copy))
    assert copy.read_text(encoding="utf-8") == doc.read_text(encoding="utf-8"), \
        "docs/cli.md is stale: run `python -m nni_adabert.config docs/cli.md`"
    for config_cls in (SearchConfig, RetrainConfig):
        assert options_table(config_cls) in doc.read_text(encoding="utf-8")
