"""People-facing entry points: the `vslerp` CLI and the Gradio editor."""

__all__: list[str] = []
