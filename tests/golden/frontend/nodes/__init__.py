"""Test-only nodes loaded into a real ComfyUI when the golden files are made (make_golden.py), so the real
frontend serialises every widget layout the pack's reader and writer must handle: seed controls (by name, by
option, turned off), a combo with its control and filter list, the image upload button, a forceInput
widget type, widgets driven by links. Plain V1 classes: the golden test imports them without ComfyUI."""

CHOICES = ["alpha", "beta", "gamma"]


class GoldenControls:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/golden", "run", "control_after_generate variants"
    RETURN_TYPES = ("INT", "GOLDEN")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "noise_seed": ("INT", {"default": 7, "min": 0, "max": 2 ** 53}),              # control by name
            "count": ("INT", {"default": 3, "min": 1, "max": 99, "control_after_generate": True}),
            "choice": (CHOICES, {"default": "beta", "control_after_generate": True}),   # + filter list
            "ratio": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
            "text": ("STRING", {"default": "two\nlines", "multiline": True}),
        }, "optional": {
            "flag": ("BOOLEAN", {"default": True}),
            "seed": ("INT", {"default": 11, "min": 0, "max": 2 ** 53, "control_after_generate": False}),
            "mode": ("COMBO", {"options": ["x", "y"], "default": "y"}),
        }}

    def run(self, **kw):
        return (kw["count"], kw)


class GoldenMedia:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/golden", "run", "image upload button"
    RETURN_TYPES = ("GOLDEN",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "golden": ("GOLDEN",),
            "image": (["a.png", "b.png"], {"image_upload": True}),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0}),
        }, "optional": {
            "label": ("STRING", {"default": "media"}),
            "steps": ("INT", {"default": 4, "min": 1, "max": 64}),
        }}

    def run(self, **kw):
        return (kw,)


class GoldenSink:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/golden", "run", "output node; a forceInput STRING"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "golden": ("GOLDEN",),
            "label": ("STRING", {"forceInput": True}),
            "n": ("INT", {"default": 2, "min": 0, "max": 100}),
        }, "optional": {
            "more": ("GOLDEN",),
            "note": ("STRING", {"default": ""}),
        }}

    def run(self, **kw):
        return {}


class GoldenText:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/golden", "run", "a STRING source"
    RETURN_TYPES = ("STRING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"default": "hello"})}}

    def run(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {c.__name__: c for c in (GoldenControls, GoldenMedia, GoldenSink, GoldenText)}
NODE_DISPLAY_NAME_MAPPINGS = {k: k for k in NODE_CLASS_MAPPINGS}
