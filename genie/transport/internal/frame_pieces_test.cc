// File: genie/transport/internal/frame_pieces_test.cc
// FramePieces: walking a frame's head and payload pieces by rest()/Advance() and by Gather().
#include "genie/transport/internal/frame_pieces.h"

#include <sys/uio.h>

#include <string>

#include "genie/transport/frame.h"
#include "gtest/gtest.h"

namespace genie::transport_internal {
namespace {

using transport::Piece;

std::string Text(const void* data, std::size_t size) {
  return std::string(static_cast<const char*>(data), size);
}

TEST(FramePieces, RestAndAdvanceWalkEveryByteSkippingEmptyPieces) {
  const unsigned char head[] = {'H', 'D'};
  const Piece payload[] = {{"", 0}, {"abc", 3}, {"", 0}, {"de", 2}, {"", 0}};
  FramePieces pieces(head, sizeof(head), payload);
  std::string out;
  // Take at most two bytes at a time, so some steps end inside a piece and some at its end.
  while (!pieces.done()) {
    const Piece rest = pieces.rest();
    ASSERT_GT(rest.size, 0u);
    const std::size_t n = rest.size < 2 ? rest.size : 2;
    out += Text(rest.data, n);
    pieces.Advance(n);
  }
  EXPECT_EQ(out, "HDabcde");
}

TEST(FramePieces, AdvanceCrossesPieces) {
  const unsigned char head[] = {'H'};
  const Piece payload[] = {{"ab", 2}, {"", 0}, {"cd", 2}};
  FramePieces pieces(head, sizeof(head), payload);
  pieces.Advance(4);  // "H", "ab", the empty piece, "c"
  ASSERT_FALSE(pieces.done());
  EXPECT_EQ(Text(pieces.rest().data, pieces.rest().size), "d");
  pieces.Advance(1);
  EXPECT_TRUE(pieces.done());
}

TEST(FramePieces, NothingToSendIsDone) {
  const Piece payload[] = {{"", 0}, {"", 0}};
  FramePieces pieces(nullptr, 0, payload);
  EXPECT_TRUE(pieces.done());
  iovec iov[4];
  EXPECT_EQ(pieces.Gather(iov, 4), 0);
}

TEST(FramePieces, GatherStartsAtTheOffsetSkipsEmptyPiecesAndStopsAtTheWindow) {
  const unsigned char head[] = {'H', 'D'};
  const Piece payload[] = {{"abc", 3}, {"", 0}, {"de", 2}, {"f", 1}};
  FramePieces pieces(head, sizeof(head), payload);
  pieces.Advance(3);  // "HD" and "a"
  iovec iov[2];
  ASSERT_EQ(pieces.Gather(iov, 2), 2);
  EXPECT_EQ(Text(iov[0].iov_base, iov[0].iov_len), "bc");
  EXPECT_EQ(Text(iov[1].iov_base, iov[1].iov_len), "de");
  iovec all[8];
  EXPECT_EQ(pieces.Gather(all, 8), 3);
  EXPECT_EQ(Text(all[2].iov_base, all[2].iov_len), "f");
}

}  // namespace
}  // namespace genie::transport_internal
