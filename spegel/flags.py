"""Command-line flags read as Spegel reads them: from the command line, else from the environment, else a default.

Every flag `--some-name` also comes from the environment variable `SOME_NAME` (Spegel's rule); a value on the
command line wins. Value grammars, the same for every flag of a kind:

- booleans: `--flag` (true), `--flag=true|false` (also `1|0|t|f`, any case, as Go's `strconv.ParseBool`), and
  `--no-flag`; from the environment `true|false|1|0|t|f`;
- lists: space-separated values after the flag (`--mirrored-registries a b`), comma-separated values, or the flag
  repeated; from the environment comma-separated (CSV, so `"a{1,3}",b` keeps a comma inside quotes). Flags whose
  values may hold commas themselves (regular expressions) split on commas only in the environment;
- durations: Go's `time.ParseDuration` grammar (`20ms`, `1.5s`, `1m30s`, `2h`, `0`), never negative;
- log levels: `DEBUG|INFO|WARN|WARNING|ERROR` in any case.

A bad value on the command line or in the environment is one line on stderr (`spegel: error: ...`) and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from spegel.duration import parse_duration

Convert = Callable[[str], Any]

__all__ = [
    "FlagParser",
    "address",
    "boolean",
    "duration",
    "env_name",
    "log_level",
    "positive_int",
    "regex",
]

_UNSET: Any = object()  # the parsed value of a flag not given on the command line (before the environment is read)


def env_name(option: str) -> str:
    """The environment variable of a flag: `--mirror-targets` -> `MIRROR_TARGETS`."""
    return option.lstrip("-").replace("-", "_").upper()


_TRUE, _FALSE = {"1", "t", "true", "yes", "on"}, {"0", "f", "false", "no", "off"}


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: want true or false")


def duration(text: str) -> float:
    """A Go duration (`20ms`, `1.5s`, `1m30s`, `0`) as seconds; see `spegel.duration`."""
    try:
        return parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def address(text: str) -> str:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[V6]:PORT`, normalised to what the server binds."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: want HOST:PORT")
    return f"{host or '0.0.0.0'}:{port}"


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {exc}") from None
    return text


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: want an integer >= 1")
    return int(text)


LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error"}


def log_level(text: str) -> str:
    """`DEBUG|INFO|WARN|WARNING|ERROR` in any case, as the name `logging` knows (`debug`, ..., `warning`)."""
    try:
        return LOG_LEVELS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}: want DEBUG, INFO, WARN or ERROR") from None


@dataclass(frozen=True)
class _Flag:
    option: str
    dest: str
    env: str
    convert: Convert
    default: Any
    many: bool
    commas: bool
    required: bool
    choices: Sequence[Any] | None

    def from_environment(self, text: str) -> Any:
        """The value of the environment variable's `text`; `ArgumentTypeError` when it is not one."""
        texts = [item.strip() for row in csv.reader([text]) for item in row if item.strip()] if self.many else [text]
        try:
            values = [self.convert(item) for item in texts]
        except (TypeError, ValueError) as exc:  # argparse's types raise these too (ArgumentTypeError is one)
            raise argparse.ArgumentTypeError(str(exc)) from None
        for value in values:
            if self.choices is not None and value not in self.choices:
                wanted = ", ".join(str(getattr(c, "value", c)) for c in self.choices)
                raise argparse.ArgumentTypeError(f"invalid choice {text!r}: want one of {wanted}")
        return values if self.many else values[0]


class _Extend(argparse.Action):
    """Collects list values over repeated flags, splitting each on commas unless the flag says not to."""

    def __init__(self, *args: Any, commas: bool = True, convert: Convert = str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commas, self.convert = commas, convert

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, _: Any = None
    ) -> None:
        current = getattr(namespace, self.dest)
        collected = [] if current is _UNSET else list(current)
        for value in values:
            items = [v.strip() for v in value.split(",")] if self.commas else [value]
            try:
                collected += [self.convert(item) for item in items if item]
            except argparse.ArgumentTypeError as exc:
                parser.error(f"argument {self.option_strings[0]}: {exc}")
        setattr(namespace, self.dest, collected)


class FlagParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose `flag()`s also read the environment, and whose errors are one line, exit 2."""

    def __init__(self, *args: Any, environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.environ = os.environ if environ is None else environ
        self._flags: list[_Flag] = []
        self._commands: dict[str, FlagParser] = {}

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"spegel: error: {message}\n")
        sys.exit(2)

    def flag(
        self,
        option: str,
        *,
        group: argparse._ActionsContainer | None = None,
        type: Convert = str,
        default: Any = None,
        many: bool = False,
        commas: bool = True,
        boolean_flag: bool = False,
        required: bool = False,
        aliases: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        """Add `option` (and `aliases`), read from the command line, else its environment variable, else
        `default`. `many`: a list; `boolean_flag`: `--x`, `--x=false`, `--no-x`."""
        target = self if group is None else group
        dest = option.removeprefix("--").replace("-", "_")
        if boolean_flag:
            target.add_argument(
                option,
                *aliases,
                dest=dest,
                nargs="?",
                const=True,
                type=boolean,
                default=_UNSET,
                metavar="BOOL",
                **kwargs,
            )
            target.add_argument(
                f"--no-{option.removeprefix('--')}", dest=dest, action="store_false", help=argparse.SUPPRESS
            )
            type = boolean
        elif many:
            target.add_argument(
                option,
                *aliases,
                dest=dest,
                nargs="+",
                action=_Extend,
                commas=commas,
                convert=type,
                default=_UNSET,
                **kwargs,
            )
        else:
            target.add_argument(option, *aliases, dest=dest, type=type, default=_UNSET, **kwargs)
        choices = kwargs.get("choices")
        self._flags.append(_Flag(option, dest, env_name(option), type, default, many, commas, required, choices))

    def command(self, commands: argparse._SubParsersAction[FlagParser], name: str, **kwargs: Any) -> FlagParser:
        """A subcommand whose flags are resolved (environment, defaults) when it is the one chosen."""
        parser: FlagParser = commands.add_parser(name, environ=self.environ, **kwargs)
        self._commands[name] = parser
        return parser

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        self._resolve(parsed)
        chosen = self._commands.get(getattr(parsed, "command", None) or "")
        if chosen is not None:
            chosen._resolve(parsed)
        return parsed

    def _resolve(self, namespace: argparse.Namespace) -> None:
        for flag in self._flags:
            if getattr(namespace, flag.dest, _UNSET) is not _UNSET:
                continue
            value = flag.default
            if (text := self.environ.get(flag.env)) is not None:
                try:
                    value = flag.from_environment(text)
                except argparse.ArgumentTypeError as exc:
                    self.error(f"{flag.env} (for {flag.option}): {exc}")
            if flag.required and value in (None, []):
                self.error(f"the following arguments are required: {flag.option} (or {flag.env})")
            setattr(namespace, flag.dest, value)
