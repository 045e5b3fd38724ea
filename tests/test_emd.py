"""DeBERTa's enhanced mask decoder (EMD, ``objectives.deberta.DebertaV2ForMaskedLMWithEMD``): its output against
the official equations written out here (microsoft/DeBERTa ``DeBERTa/apps/models/masked_language_model.py``,
``EnhancedMaskDecoder``; ``DeBERTa/deberta/disentangled_attention.py``, ``DisentangledSelfAttention``), the
positions it adds, export, the ``enhanced_mask_decoder`` setting and its FLOPs. Tiny models, CPU, seeded, offline."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForMaskedLM, DebertaV2ForMaskedLM, ElectraForMaskedLM
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

from experiments.measure.bench import random_batch
from experiments.run.export import restore_objective
from objectives import AllTokensMLM, MaskedLM, MLMPlusRTD, ReplacedTokenDetection, ReplaceMLM
from objectives.deberta import DebertaV2ForMaskedLMWithEMD
from objectives.flops import layer_flops, train_multiplier
from tests.conftest import TINY_SEQ, TINY_VOCAB
from tests.helpers import mentions

B = 3


def tiny(cls=MaskedLM, encoder="deberta-v2", **kwargs):
    model = cls(size="tiny", encoder=encoder, vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, **kwargs)
    model.configure_model()
    model.mask_token_id.fill_(4)
    return model


def perturbed(net):
    """Every weight moved off its initialisation (biases and LayerNorms included), so a term left out shows."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def padded_mask() -> torch.Tensor:
    mask = torch.ones(B, TINY_SEQ, dtype=torch.long)
    mask[1, 40:] = 0
    mask[2, 9:] = 0
    return mask


def official_layer(layer, config, kv, query, mask, rel_embeddings):
    """One DeBERTa layer with separate queries, as the official ``BertLayer`` / ``DisentangledSelfAttention``
    compute it (share_att_key, c2p|p2c, bucketed relative positions), written out: (B, L, H) -> (B, L, H)."""
    att, n, span = layer.attention.self, config.num_attention_heads, config.position_buckets
    b, length, h = kv.shape
    d = h // n

    def heads(x):  # (..., L, H) -> (..., n, L, d)
        return x.unflatten(-1, (n, d)).transpose(-3, -2)

    q, k, v = heads(att.query_proj(query)), heads(att.key_proj(kv)), heads(att.value_proj(kv))  # (B, n, L, d)
    rel = rel_embeddings[: 2 * span]  # (2 span, H), already LayerNorm'd
    pos_k, pos_q = heads(att.key_proj(rel)), heads(att.query_proj(rel))  # (n, 2 span, d): shared projections
    delta = build_relative_position(kv, kv, bucket_size=span, max_position=config.max_position_embeddings)[0]
    index = (delta + span).clamp(0, 2 * span - 1)  # (L, L): the official c2p_pos, used for p2c too
    c2c = q @ k.transpose(-1, -2)  # (B, n, L, L)
    c2p = torch.einsum("bnid,nijd->bnij", q, pos_k[:, index])  # Q_i . K^r[index(i, j)]
    p2c = torch.einsum("bnjd,nijd->bnij", k, pos_q[:, index])  # K_j . Q^r[index(i, j)]
    scores = (c2c + c2p + p2c) / math.sqrt(d * 3)
    allowed = (mask[:, None, :, None] * mask[:, None, None, :]).bool()  # (B, 1, L, L)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)  # XSoftmax: padded rows 0
    context = (probs @ v).transpose(1, 2).flatten(-2)  # (B, L, H)
    out = layer.attention.output
    attended = out.LayerNorm(out.dense(context) + query)  # BertSelfOutput: the residual is the query
    ffn = layer.output
    return ffn.LayerNorm(ffn.dense(F.gelu(layer.intermediate.dense(attended))) + attended)


def official_emd(net, input_ids, mask):
    """EnhancedMaskDecoder.emd_context_layer with position_biased_input false: z = P + hidden_states[-2], then
    the last layer twice with keys and values hidden_states[-2]. ``P`` goes through ``embed_proj`` when the
    embedding width differs (isoflop's extension)."""
    backbone = net.deberta
    hidden = backbone(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    positions = backbone.embeddings.position_embeddings.weight[: input_ids.shape[1]]  # (L, E): the raw lookup
    if backbone.embeddings.embed_proj is not None:
        positions = backbone.embeddings.embed_proj(positions)
    rel_embeddings = backbone.encoder.LayerNorm(backbone.encoder.rel_embeddings.weight)
    query = positions + hidden
    for _ in range(2):
        query = official_layer(backbone.encoder.layer[-1], net.config, hidden, query, mask, rel_embeddings)
    return query


@pytest.mark.parametrize("embedding_size", [None, 32], ids=["e=h", "e<h"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padded"])
def test_emd_matches_the_official_equations(embedding_size, padded):
    """The EMD's output equals the official decoder's equations computed by hand (eval mode), with no mask (None:
    unpadded batches) and with a padded mask, at every non-pad position. (At padded query positions the two differ
    and are never predicted: the official XSoftmax zeroes a fully masked row, transformers' softmax of a row of
    finfo.min is uniform.)"""
    torch.manual_seed(0)
    net = perturbed(tiny(embedding_size=embedding_size).model)
    assert isinstance(net, DebertaV2ForMaskedLMWithEMD)
    ids = torch.randint(5, TINY_VOCAB, (B, TINY_SEQ))
    mask = padded_mask() if padded else None
    with torch.no_grad():
        ours = net.emd_hidden(ids, mask)
        expected = official_emd(net, ids, padded_mask() if padded else torch.ones(B, TINY_SEQ, dtype=torch.long))
    keep = (mask if padded else torch.ones(B, TINY_SEQ)).bool()
    assert ours.shape == (B, TINY_SEQ, 64)
    torch.testing.assert_close(ours[keep], expected[keep], rtol=1e-5, atol=1e-5)
    if not padded:  # no mask and a mask of ones are the same network
        with torch.no_grad():
            torch.testing.assert_close(net.emd_hidden(ids, torch.ones(B, TINY_SEQ, dtype=torch.long)), ours)


def test_positions_reach_the_predictions():
    """The EMD output is not the plain last hidden state, and the same tokens at shifted absolute positions give
    the same plain encoder output (relative positions only) but different EMD outputs."""
    torch.manual_seed(0)
    net = perturbed(tiny().model)
    ids = torch.randint(5, TINY_VOCAB, (B, 48))
    shifted = torch.arange(48).expand(B, 48) + 16
    with torch.no_grad():
        plain = net.deberta(input_ids=ids).last_hidden_state
        emd, emd_shifted = net.emd_hidden(ids), net.emd_hidden(ids, position_ids=shifted)
        plain_shifted = net.deberta(input_ids=ids, position_ids=shifted).last_hidden_state
    torch.testing.assert_close(plain_shifted, plain)
    assert (emd - plain).abs().mean() > 0.1
    assert (emd_shifted - emd).abs().mean() > 0.01


def test_first_pass_without_positions_is_the_last_layer():
    """With the position table zeroed the decoder's first query is hidden_states[-2] itself, so its first pass is
    the last layer's ordinary output (eval mode)."""
    torch.manual_seed(0)
    net = perturbed(tiny().model)
    with torch.no_grad():
        net.deberta.embeddings.position_embeddings.weight.zero_()
    passes = []
    hook = net.deberta.encoder.layer[-1].register_forward_hook(lambda module, args, out: passes.append(out[0]))
    ids = torch.randint(5, TINY_VOCAB, (B, TINY_SEQ))
    with torch.no_grad():
        emd = net.emd_hidden(ids, padded_mask())
    hook.remove()
    assert len(passes) == 2  # the decoder's two passes; the last layer's ordinary pass is not run
    with torch.no_grad():
        plain = net.deberta(input_ids=ids, attention_mask=padded_mask()).last_hidden_state
    keep = padded_mask().bool()
    torch.testing.assert_close(passes[0][keep], plain[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(passes[1], emd)
    assert (emd - plain)[keep].abs().mean() > 1e-3  # the second pass still moves it


def _exported_logits(model, net, folder, batch):
    """The export's logits from the EMD class and from AutoModelForMaskedLM, and the module's own."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ours = model.mlm_logits(net, model.mlm_hidden(net, batch, batch["input_ids"]))
        plain = model.mlm_logits(net, net.base_model(**inputs).last_hidden_state)
        emd = DebertaV2ForMaskedLMWithEMD.from_pretrained(folder).eval()
        auto, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
        return ours, plain, emd(**inputs).logits, auto.eval(), auto(**inputs).logits, info


@pytest.mark.parametrize("cls", [MaskedLM, ReplacedTokenDetection], ids=lambda c: c.__name__)
def test_export_reloads_the_decoder(tiny_data, tmp_path, cls):
    """``DebertaV2ForMaskedLMWithEMD.from_pretrained`` of an export (MaskedLM's folder, or ELECTRA's
    ``generator/``) gives the objective's own logits, padded batch included.

    ``AutoModelForMaskedLM.from_pretrained`` still loads the folder, silently (no warning, nothing missing or
    unexpected in its loading info: ``DebertaV2PreTrainedModel._keys_to_ignore_on_load_unexpected`` lists
    ``position_embeddings``, so the table is dropped without a word), as a plain ``DebertaV2ForMaskedLM`` that
    predicts from the last layer's ordinary output: its logits are the network's plain ones, not those it was
    trained to give."""
    torch.manual_seed(0)
    model = tiny(cls)
    model.attach_tokenizer(tiny_data.tokenizer)
    perturbed(model)
    model.export(tmp_path / "out")
    net = model.model if cls is MaskedLM else model.generator
    folder = tmp_path / "out" if cls is MaskedLM else tmp_path / "out" / "generator"
    batch = next(iter(tiny_data.val_dataloader()))
    batch["attention_mask"][1, 40:] = 0  # a padded row too
    batch["padded"] = True
    ours, plain, emd, auto, auto_logits, info = _exported_logits(model, net, folder, batch)
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(emd[keep], ours[keep], rtol=1e-5, atol=1e-5)
    assert type(auto) is DebertaV2ForMaskedLM
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(auto_logits[keep], plain[keep], rtol=1e-5, atol=1e-5)
    assert (auto_logits - ours)[keep].abs().mean() > 1e-2


def test_masked_lm_forward_uses_the_decoder():
    """MaskedLM's logits at the chosen positions are the EMD's, and its loss is what the exported class computes."""
    torch.manual_seed(0)
    model = perturbed(tiny())
    batch = random_batch(B, TINY_SEQ, TINY_VOCAB, torch.device("cpu"))
    masked = model.choose_positions(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(batch["input_ids"], None, batch["token_type_ids"], masked)
        full = model.model(input_ids=batch["input_ids"]).logits  # (B, L, V)
    torch.testing.assert_close(logits, masked.gather(full), rtol=1e-5, atol=1e-5)


def test_the_setting():
    """``enhanced_mask_decoder`` false builds transformers' plain classes; true (the default) the EMD class for every
    DeBERTa masked LM but MLMPlusRTD's head on the discriminator. ELECTRA: unchanged either way, FLOPs included."""
    for cls in (MaskedLM, ReplacedTokenDetection, ReplaceMLM, AllTokensMLM, MLMPlusRTD):
        on, off = tiny(cls), tiny(cls, enhanced_mask_decoder=False)
        assert on.hparams.enhanced_mask_decoder is True and off.hparams.enhanced_mask_decoder is False
        nets = ["model"] if cls is MaskedLM else ["generator"] + (["mlm"] if issubclass(cls, ReplaceMLM) else [])
        for name in nets:
            assert type(getattr(on, name)) is DebertaV2ForMaskedLMWithEMD, (cls, name)
            assert type(getattr(off, name)) is DebertaV2ForMaskedLM, (cls, name)
        if cls is MLMPlusRTD:
            assert type(on.discriminator_mlm) is DebertaV2ForMaskedLM
        electra_on, electra_off = tiny(cls, encoder="electra"), tiny(cls, encoder="electra", enhanced_mask_decoder=False)
        net = "model" if cls is MaskedLM else "generator"
        assert type(getattr(electra_on, net)) is ElectraForMaskedLM
        assert electra_on.flops_per_batch(B, TINY_SEQ) == electra_off.flops_per_batch(B, TINY_SEQ)
        assert sum(p.numel() for p in electra_on.parameters()) == sum(p.numel() for p in electra_off.parameters())


@pytest.mark.parametrize("setting", [True, False])
def test_the_setting_is_saved_with_the_checkpoint(setting):
    """The setting is a hyper-parameter: a checkpoint restores it, and with it the network's class and weights."""
    torch.manual_seed(0)
    model = tiny(ReplacedTokenDetection, enhanced_mask_decoder=setting)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    assert checkpoint["hyper_parameters"]["enhanced_mask_decoder"] is setting
    restored = restore_objective(ReplacedTokenDetection, checkpoint)
    assert restored.hparams.enhanced_mask_decoder is setting
    assert type(restored.generator) is (DebertaV2ForMaskedLMWithEMD if setting else DebertaV2ForMaskedLM)
    key = "generator.deberta.embeddings.position_embeddings.weight"
    assert (key in checkpoint["state_dict"]) is setting
    if setting:
        torch.testing.assert_close(restored.state_dict()[key], checkpoint["state_dict"][key])


def test_the_table_is_initialised_like_the_others():
    torch.manual_seed(0)
    net = tiny().model
    table = net.deberta.embeddings.position_embeddings
    assert table.weight.shape == (TINY_SEQ, 64)
    assert abs(table.weight.std().item() - net.config.initializer_range) < 0.002
    assert abs(table.weight.mean().item()) < 0.002


@pytest.mark.parametrize("cls", [MaskedLM, ReplacedTokenDetection, ReplaceMLM, AllTokensMLM],
                         ids=lambda c: c.__name__)
def test_flops_of_the_decoder(cls):
    """Each network with the EMD costs one layer pass more, forward and backward (the last layer runs twice, its
    ordinary pass not at all); tests/test_objective_flops.py checks the totals against FlopCounterMode."""
    on, off = tiny(cls), tiny(cls, enhanced_mask_decoder=False)
    networks = {MaskedLM: 1, ReplacedTokenDetection: 1}.get(cls, 2)  # generator and/or the main MLM
    shapes = [on.shape] if cls is MaskedLM else [on.generator_shape] + ([on.shape] if networks == 2 else [])
    extra = sum(train_multiplier("actual") * layer_flops(s, TINY_SEQ, "actual", B) for s in shapes)
    assert on.flops_per_batch(B, TINY_SEQ) - off.flops_per_batch(B, TINY_SEQ) == pytest.approx(extra, rel=1e-12)


def test_sharing_all_keeps_the_table():
    """Sharing every weight hands the generator the discriminator's backbone; the decoder's table goes with it."""
    torch.manual_seed(0)
    model = tiny(ReplacedTokenDetection, embedding_sharing="all", generator_hidden_fraction=1.0,
                 generator_layers_fraction=1.0)
    assert model.generator.base_model is model.discriminator.base_model
    assert model.generator.base_model.embeddings.position_embeddings is not None
    loss = model.compute(random_batch(B, TINY_SEQ, TINY_VOCAB, torch.device("cpu")), None)["loss"]
    loss.backward()
    assert model.generator.base_model.embeddings.position_embeddings.weight.grad.abs().sum() > 0


def test_two_stage_copies_all_but_the_decoders_position_table():
    """Two-stage training on DeBERTa with the decoder: the discriminator starts as the generator's encoder; the
    generator's absolute-position table (its decoder's) stays with the generator, frozen with it."""
    torch.manual_seed(0)
    model = tiny(ReplacedTokenDetection, generator_hidden_fraction=1.0, generator_layers_fraction=1.0, two_stage=True)
    model.start_discriminator_stage()
    generator, discriminator = model.generator.base_model.state_dict(), model.discriminator.base_model.state_dict()
    assert set(generator) - set(discriminator) == {"embeddings.position_embeddings.weight"}
    for key, value in discriminator.items():
        assert torch.equal(value, generator[key]), key
    assert not any(p.requires_grad for p in model.generator.parameters())


@pytest.mark.parametrize("cls", [MaskedLM, ReplaceMLM, AllTokensMLM], ids=lambda c: c.__name__)
def test_an_unpadded_batch_reaches_the_decoder_without_a_mask(cls):
    """The decoder gets no attention mask on an unpadded batch (``padded`` False) and the batch's mask on a padded
    one, with the same losses on the same tokens and draws (what tests/test_step.py checks of the backbones, whose
    ``forward`` the decoder's path does not call)."""
    torch.manual_seed(0)
    model = tiny(cls, dropout=0.0)
    seen = []
    for net in model.modules():
        if isinstance(net, DebertaV2ForMaskedLMWithEMD):
            def recording(input_ids, attention_mask=None, *args, _emd=net.emd_hidden, **kwargs):
                seen.append(attention_mask)
                return _emd(input_ids, attention_mask, *args, **kwargs)

            net.emd_hidden = recording
    batch = random_batch(B, TINY_SEQ, TINY_VOCAB, torch.device("cpu"))
    unmasked = model.compute(batch, torch.Generator().manual_seed(1))
    assert len(seen) == (1 if cls is MaskedLM else 2) and all(mask is None for mask in seen)
    seen.clear()
    masked = model.compute({**batch, "padded": True}, torch.Generator().manual_seed(1))
    assert len(seen) == (1 if cls is MaskedLM else 2) and all(mask is not None for mask in seen)
    for name, value in masked.items():
        if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
            torch.testing.assert_close(unmasked[name], value, rtol=1e-5, atol=1e-6)
