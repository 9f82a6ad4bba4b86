"""Conversion between this project's checkpoints and fairseq's fconv_lm (`python -m gcnn.convert`).

    from-fairseq MODEL.pt --dict DICT.txt --out CKPT.pt   published fairseq / wav2letter GCNNs
    to-fairseq CKPT.pt --out DIR                          DIR/model.pt + DIR/dict.txt for fairseq

Neither direction imports fairseq. Reading a fairseq file never runs pickled code
(fairseq_pickle); see docs/fairseq.md.
"""

from gcnn.convert.from_fairseq import Converted, convert_file, from_fairseq
from gcnn.convert.to_fairseq import Exported, to_fairseq

__all__ = ["Converted", "Exported", "convert_file", "from_fairseq", "to_fairseq"]
