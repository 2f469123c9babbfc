# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Preface: how to read and run this book
#
# (placeholder: the full preface is being written)

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import torch

x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
rwkvlab.check("preface: check against itself", x, x.clone())
