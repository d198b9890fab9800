"""``lstm-fused``: torch.nn.LSTM (no peepholes; cuDNN on GPUs), for speed comparisons."""
from __future__ import annotations

from torch import nn


class FusedLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int, recurrence: str = "auto"):
        super().__init__()  # ``recurrence`` does not apply: cuDNN (or ATen on the CPU) runs the whole loop
        self.rnn = nn.LSTM(input_size, hidden, batch_first=True)

    def forward(self, x, state=None):
        if state is not None:
            state = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        y, (h, c) = self.rnn(x, state)
        return y, (h[0], c[0])
