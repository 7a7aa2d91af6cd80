"""transformers' own common model and configuration tests (`ModelTesterMixin`, `ConfigTester`) on a tiny EPNG.

The two suites are vendored in `tests/transformers_common/`. What EPNG does not have is switched off below, one
reason per flag or skipped test; everything else runs as transformers runs it on its own models.
"""

import unittest

import torch
from transformers_common.test_configuration_common import ConfigTester
from transformers_common.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding


class EpngModelTester:
    """Builds a tiny config and inputs: a 64 x 64 image (a 4 x 4 grid of pixel tokens), 12 tokens, 3 phrases."""

    def __init__(self, parent, batch_size=2, image_size=64, seq_length=12, num_phrases=3, vocab_size=99):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.text_seq_length = seq_length
        self.num_phrases = num_phrases
        self.vocab_size = vocab_size
        self.is_training = True
        config = self.get_config()
        # What the mixin reads: the communicator's layers, width and heads, and its tokens (the H/16 x W/16 grid).
        self.num_hidden_layers = config.num_communicator_layers
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.seq_length = (image_size // 16) ** 2

    def get_config(self):
        text_config = {**EpngConfig.tiny().text_config.to_dict(), "vocab_size": self.vocab_size}
        return EpngConfig.tiny(text_config=text_config)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.text_seq_length], self.vocab_size)
        # tokens 1-2, 4 and 6-8 are phrases 0, 1 and 2; the rest belongs to none
        phrase_ids = torch.full((self.batch_size, self.text_seq_length), -1, dtype=torch.long)
        phrase_ids[:, 1:3], phrase_ids[:, 4], phrase_ids[:, 6:9] = 0, 1, 2
        inputs = {
            "pixel_values": floats_tensor([self.batch_size, 3, self.image_size, self.image_size]),
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "phrase_ids": phrase_ids,
            "phrase_mask": torch.ones(self.batch_size, self.num_phrases, dtype=torch.bool),
        }
        return self.get_config(), inputs


class EpngModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (EpngForPanopticNarrativeGrounding,)

    def setUp(self):
        self.model_tester = EpngModelTester(self)
        self.config_tester = ConfigTester(self, config_class=EpngConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # The mixin adds labels for the heads it knows; EPNG's are one mask per phrase.
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        if return_labels:
            tester = self.model_tester
            shape = (tester.batch_size, tester.num_phrases, tester.image_size, tester.image_size)
            inputs["mask_labels"] = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
        return inputs

    def test_config(self):
        self.config_tester.run_common_tests()
