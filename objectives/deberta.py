"""DeBERTa-v2's replaced-token-detection network, which Hugging Face transformers does not ship.

:class:`DebertaV2ForReplacedTokenDetection` is a ``DebertaV2Model`` with DeBERTa-v3's discriminator head,
named as the official code names it (microsoft/DeBERTa ``DeBERTa/apps/models/replaced_token_detection_model.py``,
``LMMaskPredictionHead``: ``mask_predictions.LayerNorm``, ``.dense``, ``.classifier``), so the head's
weights sit where the official code keeps them. An export loads with
``AutoModel.from_pretrained(dir)`` as a plain ``DebertaV2Model`` (the head is left behind, as for
fine-tuning) and with ``DebertaV2ForReplacedTokenDetection.from_pretrained(dir)`` as the whole discriminator.

:class:`DebertaV2ForMaskedLMWithEMD` is transformers' ``DebertaV2ForMaskedLM`` with DeBERTa's enhanced mask
decoder (EMD), which transformers does not ship: the official masked LM (microsoft/DeBERTa
``DeBERTa/apps/models/masked_language_model.py``, ``MaskedLanguageModel`` and ``EnhancedMaskDecoder``) predicts
from the last layer run again with absolute positions in its queries. See the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DebertaV2ForMaskedLM, DebertaV2Model, DebertaV2PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import MaskedLMOutput
from transformers.utils import ModelOutput



class DebertaV2RTDHead(nn.Module):
    """One logit per token: LayerNorm([CLS] state + token state) -> dense(h) -> activation -> dense(1)
    (official ``LMMaskPredictionHead``, names included; isoflop before this version spelt the last layer
    ``classifer``, whose weights a load now leaves out)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        states = self.LayerNorm(hidden[:, :1] + hidden)  # (B, L, H): every token sees the [CLS] state
        return self.classifier(self.transform_act_fn(self.dense(states))).squeeze(-1)  # (B, L)


@dataclass
class RTDOutput(ModelOutput):
    logits: torch.FloatTensor | None = None


class DebertaV2ForReplacedTokenDetection(DebertaV2PreTrainedModel):
    """A DeBERTa-v2 encoder with DeBERTa-v3's replaced-token-detection head."""

    def __init__(self, config):
        super().__init__(config)
        self.deberta = DebertaV2Model(config)
        self.mask_predictions = DebertaV2RTDHead(config)
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, **kwargs) -> RTDOutput:
        hidden = self.deberta(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              **kwargs).last_hidden_state
        return RTDOutput(logits=self.mask_predictions(hidden))


class DebertaV2ForMaskedLMWithEMD(DebertaV2ForMaskedLM):
    """``DebertaV2ForMaskedLM`` whose predictions go through DeBERTa's enhanced mask decoder (EMD).

    The official masked LM (microsoft/DeBERTa ``DeBERTa/apps/models/masked_language_model.py``,
    ``EnhancedMaskDecoder.emd_context_layer``), for encoders without absolute positions in their input
    (``position_biased_input`` false, as DeBERTa-v3's), takes the input of the last layer, ``H = hidden_states[-2]``,
    and the raw absolute-position lookup ``P`` (``DeBERTa/deberta/bert.py``, ``BertEmbeddings``: a
    ``max_position_embeddings x embedding_size`` table that it always has and returns as ``position_embeddings``,
    whether or not it adds it to the input), and runs the last encoder layer twice with queries
    ``Q1 = layer(keys/values H, queries P + H)``, ``Q2 = layer(keys/values H, queries Q1)`` (same attention mask,
    relative positions and relative embeddings as the encoder); the LM head reads ``Q2``. So the only place the
    network sees absolute positions is the decoder, just before the output.

    Here the table sits at the official name, ``deberta.embeddings.position_embeddings`` (initialised
    N(0, ``initializer_range``) like the other tables). transformers' ``DebertaV2Embeddings`` looks it up but, with
    ``position_biased_input`` false, never adds it to the input, so the encoder is transformers' own, unchanged.
    :meth:`emd_hidden` builds the decoder from transformers' pieces (``DebertaV2Layer`` with ``query_states``,
    the encoder's ``get_attention_mask``, ``get_rel_pos``, ``get_rel_embedding``), and :meth:`forward` gives the
    MLM logits through it, so ``DebertaV2ForMaskedLMWithEMD.from_pretrained(dir)`` predicts as training did.

    Two differences from the official code, neither of which changes what the loss sees: the official also runs
    the last layer's ordinary pass (``hidden_states[-1]``) and then discards it; :meth:`emd_hidden` stops the
    encoder before its last layer, so an EMD network runs the last layer twice where the plain network runs it once
    (:func:`objectives.flops.emd_flops`). And when ``embedding_size != hidden_size`` the official sum ``P + H`` would not type-check;
    here ``P`` goes through the embeddings' own projection ``embed_proj`` first (an extension).

    ``AutoModelForMaskedLM.from_pretrained(dir)`` loads an export of this class as a plain ``DebertaV2ForMaskedLM``:
    transformers drops the position table (its ``DebertaV2PreTrainedModel._keys_to_ignore_on_load_unexpected``
    lists ``position_embeddings``) and predicts from the last layer's ordinary output, without the decoder. Those
    logits are not the ones this network was trained to give. ``AutoModel`` (fine-tuning) loads the backbone, which
    is the same in both.
    """

    def __init__(self, config):
        super().__init__(config)
        embeddings = self.deberta.embeddings
        if embeddings.position_biased_input:
            raise ValueError("the enhanced mask decoder of DebertaV2ForMaskedLMWithEMD is for encoders without "
                             "absolute positions in their input: set position_biased_input false (the official EMD "
                             "is then just the last layer)")
        embeddings.position_embeddings = nn.Embedding(config.max_position_embeddings, embeddings.embedding_size)
        self._init_weights(embeddings.position_embeddings)

    def emd_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                   token_type_ids: Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        """The enhanced mask decoder's output (B, L, H), what the LM head reads, on ``input_ids`` (B, L).

        ``attention_mask`` (B, L) of 1 for tokens and 0 for padding; None: no padding (a mask of ones, as
        ``DebertaV2Model`` builds it). ``position_ids``: the absolute positions looked up for the decoder's queries
        (default 0 .. L-1, as the official ``BertEmbeddings``). Runs every layer but the last as ``DebertaV2Model``
        does, then the last layer twice; no host-device sync.
        """
        backbone = self.deberta
        embeddings, encoder = backbone.embeddings, backbone.encoder
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, device=input_ids.device)
        hidden = embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                            mask=attention_mask)  # (B, L, H): transformers' embeddings, positions not added
        first = hidden
        mask = encoder.get_attention_mask(attention_mask)  # (B, 1, L, L)
        relative_pos = encoder.get_rel_pos(hidden)  # (1, L, L) bucketed relative positions
        rel_embeddings = encoder.get_rel_embedding()  # (2 x buckets, H), LayerNorm'd
        *lower, last = encoder.layer
        for i, layer in enumerate(lower):  # hidden_states[-2]: the input of the last layer
            hidden = layer(hidden, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings)[0]
            if i == 0 and encoder.conv is not None:
                hidden = encoder.conv(first, hidden, attention_mask)
        if position_ids is None:
            position_ids = embeddings.position_ids[:, : input_ids.shape[1]]  # (1, L)
        positions = embeddings.position_embeddings(position_ids)  # (1 or B, L, E): the raw lookup
        if embeddings.embed_proj is not None:
            positions = embeddings.embed_proj(positions)  # E -> H (not in the official code, see the class)
        query = positions + hidden
        for _ in range(2):  # the official EnhancedMaskDecoder: the last layer twice, keys and values always H
            query = last(hidden, mask, query_states=query, relative_pos=relative_pos, rel_embeddings=rel_embeddings)[0]
        return query

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None, inputs_embeds: Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                **kwargs) -> MaskedLMOutput:
        """MLM logits (B, L, V) through the enhanced mask decoder (and the cross entropy over ``labels``, -100
        ignored, when given), as training computes them."""
        if input_ids is None or inputs_embeds is not None or output_attentions or output_hidden_states:
            raise ValueError("DebertaV2ForMaskedLMWithEMD takes input_ids (not inputs_embeds) and returns logits "
                             "only (no attentions or hidden states)")
        hidden = self.emd_hidden(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.cls(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits)
