"""The data scientist's half of the Duet MNIST tutorial (OpenMined Privacy Conference 2020).

    tether network &                     # the rendezvous service, on this machine
    python owner.py                      # prints a session id
    python scientist.py <session id>     # prints a client id: type it into owner.py

The scientist trains SyNet on the owner's MNIST without seeing it: asks whether the owner has
CUDA (the owner's handler accepts), asks for the training set's size (accepted), trains
remotely asking for the loss now and then (denied: the owner sees it, the scientist does not),
then gets the trained model (accepted) and tests it locally. The code is the tutorial's, with
`tether` for `syft` and tether's datasets and transforms for torchvision's.
"""

import argparse
import time

import torch

import tether as sy
from tether import datasets, transforms

duet = None  # the tutorial's notebook global, set by main()


class SyNet(sy.Module):
    def __init__(self, torch_ref):
        super(SyNet, self).__init__(torch_ref=torch_ref)
        self.conv1 = self.torch_ref.nn.Conv2d(1, 32, 3, 1)
        self.conv2 = self.torch_ref.nn.Conv2d(32, 64, 3, 1)
        self.dropout = self.torch_ref.nn.Dropout2d(0.25)
        self.fc1 = self.torch_ref.nn.Linear(9216, 128)
        self.fc2 = self.torch_ref.nn.Linear(128, 10)

    def forward(self, x):
        x = self.torch_ref.nn.functional.relu(self.conv1(x))
        x = self.torch_ref.nn.functional.relu(self.conv2(x))
        x = self.torch_ref.nn.functional.max_pool2d(x, 2)
        x = self.dropout(x)
        x = self.torch_ref.flatten(x, 1)
        x = self.torch_ref.nn.functional.relu(self.fc1(x))
        x = self.fc2(self.dropout(x))
        output = self.torch_ref.nn.functional.log_softmax(x, dim=1)
        return output


def train(remote_model, torch_ref, train_loader, optimizer, epoch, args, train_data_length):
    train_batches = round((train_data_length / args["batch_size"]) + 0.5)
    print(f"> Running train in {train_batches} batches")
    if remote_model.is_local:
        print("Training requires remote remote_model")
        return

    remote_model.train()

    for batch_idx, data in enumerate(train_loader):
        data_ptr, target_ptr = data[0], data[1]
        optimizer.zero_grad()
        output = remote_model(data_ptr)
        loss = torch_ref.nn.functional.nll_loss(output, target_ptr)
        loss.backward()
        optimizer.step()
        loss_item = loss.item()
        train_loss = duet.python.Float(0)  # create a remote Float we can use for summation
        train_loss += loss_item
        if batch_idx % args["log_interval"] == 0:
            local_loss = None
            local_loss = loss_item.get(
                name="loss",
                reason="To evaluate training progress",
                request_block=True,
                timeout_secs=5,
            )
            if local_loss is not None:
                print("Train Epoch: {} {} {:.4}".format(epoch, batch_idx, local_loss))
            else:
                print("Train Epoch: {} {} ?".format(epoch, batch_idx))
        if args["limit"] and batch_idx + 1 >= args["limit"]:
            break


def test_local(model, test_loader, test_data_length, args):
    # download remote model
    if not model.is_local:
        local_model = model.get(
            request_block=True, name="model", reason="test evaluation", timeout_secs=5
        )
    else:
        local_model = model
    # + 0.5 lets us math.ceil without the import
    test_batches = round((test_data_length / args["test_batch_size"]) + 0.5)
    print(f"> Running test_local in {test_batches} batches")
    local_model.eval()
    test_loss = 0.0
    correct = 0.0
    seen = 0

    with torch.no_grad():
        for batch_idx, (data, target) in enumerate(test_loader):
            output = local_model(data)
            iter_loss = torch.nn.functional.nll_loss(output, target, reduction="sum").item()
            test_loss = test_loss + iter_loss
            pred = output.argmax(dim=1)
            total = pred.eq(target).sum().item()
            correct += total
            seen += len(target)
            if args["test_limit"] and batch_idx + 1 >= args["test_limit"]:
                break

    accuracy = correct / seen
    print(f"Test Set Accuracy: {100 * accuracy}%")
    return accuracy, local_model


def get_train_length(train_data_ptr):
    train_length_ptr = train_data_ptr.len()
    train_data_length = train_length_ptr.get(
        request_block=True, name="train_size", reason="To write the training loop", timeout_secs=10
    )
    return train_data_length


def main(joined, args):
    """Run the tutorial on a joined duet; returns the test accuracy of each epoch's model."""
    global duet
    duet = joined
    torch.manual_seed(args["seed"])  # the same start for a local run to compare with
    local_model = SyNet(torch)

    local_transform_1 = transforms.ToTensor()  # this converts images to Tensors
    local_transform_2 = transforms.Normalize(0.1307, 0.3081)  # this normalizes the dataset
    local_transforms = transforms.Compose([local_transform_1, local_transform_2])

    test_data = datasets.MNIST(
        args["data"], train=False, download=False, transform=local_transforms
    )
    test_loader = torch.utils.data.DataLoader(test_data, args["test_batch_size"])
    test_data_length = len(test_loader.dataset)

    # send the model to data owner's machine
    remote_model = local_model.send(duet)
    remote_torch = duet.torch

    # lets ask the Data Owner if their Machine has CUDA
    has_cuda = False
    has_cuda_ptr = remote_torch.cuda.is_available()
    has_cuda = bool(
        has_cuda_ptr.get(
            request_block=True,
            name="cuda_is_available",
            reason="To run test and inference locally",
            timeout_secs=5,
        )
    )
    print(f"Data Owner has CUDA: {has_cuda}")

    remote_torch.manual_seed(args["seed"])
    params = remote_model.parameters()
    optimizer = remote_torch.optim.Adadelta(params, lr=args["lr"])

    print(duet.store.pandas)
    train_data_ptr = duet.store["mnist-train"]
    train_data_length = get_train_length(train_data_ptr)
    print(f"Training Dataset size is: {train_data_length}")
    train_loader_ptr = remote_torch.utils.data.DataLoader(
        train_data_ptr, batch_size=args["batch_size"], shuffle=True
    )

    scheduler = remote_torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args["gamma"])
    accuracies = []
    for epoch in range(1, args["epochs"] + 1):
        epoch_start = time.time()
        print(f"Epoch: {epoch}")
        # remote training on model with remote_torch
        train(
            remote_model, remote_torch, train_loader_ptr, optimizer, epoch, args, train_data_length
        )
        # local testing on model with local torch
        accuracy, trained = test_local(remote_model, test_loader, test_data_length, args)
        accuracies.append(accuracy)
        scheduler.step()
        epoch_end = time.time()
        print(f"Epoch time: {int(epoch_end - epoch_start)} seconds")
    if args["save_model"]:
        torch.save(trained.state_dict(), args["save_model"])
    return accuracies, local_model


def tutorial_args(argv=None):
    """The tutorial's settings; the command line shortens them to run here."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session_id", nargs="?", help="the session id the owner printed")
    parser.add_argument("--network", help="the tether network service (default: this machine)")
    parser.add_argument("--epochs", type=int, default=1, help="the tutorial trains 14")
    parser.add_argument("--limit", type=int, default=0, help="train batches per epoch (0: all)")
    parser.add_argument("--test-limit", type=int, default=0, help="test batches (0: all)")
    parser.add_argument("--data", default=None, help="MNIST folder (default: tether's sample)")
    parser.add_argument("--save-model", default="", help="where to save the trained weights")
    cli = parser.parse_args(argv)
    args = {
        "batch_size": 64,
        "test_batch_size": 1000,
        "epochs": cli.epochs,
        "lr": 1.0,
        "gamma": 0.7,
        "no_cuda": False,
        "seed": 42,  # the meaning of life
        "log_interval": 10,
        "save_model": cli.save_model,
        "limit": cli.limit,
        "test_limit": cli.test_limit,
        "data": cli.data,
    }
    return cli, args


if __name__ == "__main__":
    cli, args = tutorial_args()
    with sy.join_duet(cli.session_id, network_url=cli.network) as joined:
        main(joined, args)
