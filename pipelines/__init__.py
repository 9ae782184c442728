"""VSlerpPipeline: vertical-SLERP editing with diffusers generators (Kandinsky 2.2, unCLIP)."""

__all__: list[str] = []
