"""Model weights: preset folders and ``.keras`` files (`preset_io`: ``MISSU.from_preset``
/ ``save_to_preset``), published weights (`download`; `publishing.publish` writes them),
and the authors' released PyTorch checkpoints (`torch_convert`).

`missu_keras.models` imports `preset_io`, so nothing imported here may import
`missu_keras.models`; `publishing` (which does) is imported by its full name.
"""
