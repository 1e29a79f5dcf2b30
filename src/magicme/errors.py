"""The error a library call raises for a setting that cannot work.

It names the setting (a settings field, as Python callers spell it); the CLI turns that
name into its option (`num_inference_steps` -> `--num-inference-steps`), so only the CLI
speaks of flags.
"""


class SettingError(ValueError):
    """`setting` cannot take the value it was given; `problem` says why and what works."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting, self.problem = setting, problem
